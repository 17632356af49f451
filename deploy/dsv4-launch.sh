#!/usr/bin/env bash
# Turns the deployment's environment (deploy/.env.example documents every variable) into one `dsv4 serve`
# command line and execs it. The container's entrypoint and scripts/start-dsv4.sh's native mode both run this,
# so the two modes cannot drift apart. With arguments it runs `dsv4 "$@"` unchanged (e.g. `docker run IMAGE
# serve --port 9000`, or `inspect --model /model`).
#   dsv4-launch.sh                 serve from the environment
#   dsv4-launch.sh --print         print the command it would run (one argument per line) and exit
#   dsv4-launch.sh healthcheck     the container HEALTHCHECK: GET /health on the serving rank; a headless worker
#                                  has no HTTP port, so it is healthy while it runs (PID 1 alive)
# The API key travels in DSV4_API_KEY (read by dsv4 itself), never on the command line, where `ps` shows it.
set -euo pipefail
DSV4_BIN=${DSV4_BIN:-$(dirname "$(readlink -f "$0")")/dsv4}

if [ "${1:-}" = healthcheck ]; then
  [ "${HEADLESS:-0}" = 1 ] && exit 0
  # bash's /dev/tcp: the runtime image carries no HTTP client.
  exec 3<>"/dev/tcp/127.0.0.1/${PORT:-8000}" || exit 1
  printf 'GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  IFS= read -r status <&3 || exit 1
  case "$status" in *" 200"*) exit 0 ;; *) exit 1 ;; esac
fi
print=0
if [ "${1:-}" = --print ]; then print=1; shift; fi
if (($#)); then exec "$DSV4_BIN" "$@"; fi

args=(serve --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}")
# MODEL_PATH empty: the embedded demo model (random weights), for trying the API.
[ -n "${MODEL_PATH:-}" ] && args+=(--model "$MODEL_PATH")
[ -n "${SERVED_MODEL_NAME:-}" ] && args+=(--served-model-name "$SERVED_MODEL_NAME")
[ -n "${MAX_MODEL_LEN:-}" ] && args+=(--max-model-len "$MAX_MODEL_LEN")
[ -n "${KV_CACHE_DTYPE:-}" ] && args+=(--kv-cache-dtype "$KV_CACHE_DTYPE")
[ -n "${KV_CACHE_MEMORY:-}" ] && args+=(--kv-cache-memory "$KV_CACHE_MEMORY")
[ -n "${DEVICE:-}" ] && args+=(--device "$DEVICE")
# Multi-rank serving (vLLM's flags): TP over all GPUs of all nodes; NNODES > 1 adds the rendezvous.
TP=${TENSOR_PARALLEL_SIZE:-1}
if [ "$TP" != 1 ]; then
  args+=(--tensor-parallel-size "$TP")
fi
if [ "${NNODES:-1}" != 1 ]; then
  : "${MASTER_ADDR:?MASTER_ADDR (address of the head node on the NCCL interface) is required with NNODES > 1}"
  args+=(--nnodes "$NNODES" --node-rank "${NODE_RANK:-0}" --master-addr "$MASTER_ADDR"
         --master-port "${MASTER_PORT:-29500}")
fi
[ "${HEADLESS:-0}" = 1 ] && args+=(--headless)
# Anything else, word-split on purpose (flags without spaces in their values, e.g. --max-num-seqs 64).
if [ -n "${DSV4_EXTRA_ARGS:-}" ]; then
  read -r -a extra <<<"$DSV4_EXTRA_ARGS"
  args+=("${extra[@]}")
fi
# The CPU collectives (gloo) bind the interface NCCL uses, as in the Compose file.
if [ -n "${NCCL_SOCKET_IFNAME:-}" ] && [ -z "${GLOO_SOCKET_IFNAME:-}" ]; then
  export GLOO_SOCKET_IFNAME="$NCCL_SOCKET_IFNAME"
fi
[ -n "${API_KEY:-}" ] && export DSV4_API_KEY="$API_KEY"
unset API_KEY
if ((print)); then printf '%s\n' "$DSV4_BIN" "${args[@]}"; exit 0; fi
exec "$DSV4_BIN" "${args[@]}"
