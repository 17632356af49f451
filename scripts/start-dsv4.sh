#!/usr/bin/env bash
# Starts dsv4 on the head node (this host) and, with NNODES=2, on the worker over ssh: worker first, then the
# head; then waits for the head's /v1/models. On a failure it prints the reason and the tail of the failing
# node's log, and stops both. Run on the head:
#   scripts/start-dsv4.sh [--env deploy/.env]
# DSV4_MODE=container runs deploy/docker-compose.yml on each node; native runs the dsv4 binary (DSV4_BIN).
# The settings (deploy/.env.example documents them) are copied to the worker; it needs no checkout, only ssh,
# the checkpoint at MODEL_DIR and the image (container) or the binary (native). Preflight checks run first
# and nothing starts unless all pass. scripts/stop-dsv4.sh stops both nodes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/dsv4-deploy-lib.sh"
parse_args "$@"
load_env

problems=()
problem() { problems+=("$*"); }

# ---- preflight: gather every problem, then refuse with all of them (one round trip to fix) ----------------
[ -n "${MODEL_DIR:-}" ] || problem "MODEL_DIR is empty in $ENV_FILE: set it to the checkpoint directory"
if [ "$NNODES" = 2 ]; then
  [ -n "${MASTER_ADDR:-}" ] || problem "MASTER_ADDR is empty: the head's address on NCCL_SOCKET_IFNAME (ip -4 addr show IFACE)"
  [ "${TENSOR_PARALLEL_SIZE:-1}" -ge 2 ] ||
    problem "NNODES=2 with TENSOR_PARALLEL_SIZE=${TENSOR_PARALLEL_SIZE:-1}: set it to the GPUs of both nodes (2 for 2x Spark)"
fi
nodes=(0)
if [ -n "$WORKER_SSH" ]; then
  if err=$(ssh "${SSH_ARGS[@]}" "$WORKER_SSH" true 2>&1 </dev/null); then
    nodes=(0 1)
  else
    problem "cannot ssh to the worker $WORKER_SSH without a password: ${err##*$'\n'}
    fix: ssh-copy-id $WORKER_SSH (and accept its host key once: ssh $WORKER_SSH true); SSH_OPTS=$SSH_OPTS"
  fi
fi

# One fingerprint per node for "same checkpoint" and "same dsv4"; all node checks in one ssh round trip each.
m=$(q "${MODEL_DIR:-/nonexistent}")
node_facts() {
  local rank=$1 ver
  if [ "$DSV4_MODE" = native ]; then
    ver="b=$(q "${DSV4_BIN:-}"); if [ -x \"\$b\" ]; then echo \"version \$(sha256sum < \"\$b\" | cut -c1-16)\"; else echo 'version missing'; fi"
  else
    ver="command -v docker-compose >/dev/null || echo 'nocompose'
      id=\$(docker image inspect -f '{{.Id}}' $(q "${DSV4_IMAGE:-dsv4:cuda}") 2>/dev/null) && echo \"version \$id\" || echo 'version missing'"
  fi
  on_node "$rank" "
    if [ -f $m/config.json ]; then
      echo \"model \$( (cd $m && cat config.json; cat ./*.index.json 2>/dev/null; stat -c '%n %s' ./*.safetensors 2>/dev/null) | sha256sum | cut -c1-16)\"
    else echo 'model missing'; fi
    $ver
    if [ $(q "$DSV4_MODE") = native ]; then p=\$(cat $(q "$STATE_DIR")/dsv4-rank$rank.pid 2>/dev/null) && kill -0 \"\$p\" 2>/dev/null && echo running
    else [ \"\$(docker inspect -f '{{.State.Running}}' dsv4-rank$rank 2>/dev/null)\" = true ] && echo running; fi
    if [ $rank = 0 ]; then
      for p in $PORT $([ "$NNODES" = 2 ] && echo "$MASTER_PORT"); do
        ss -Hltn \"sport = :\$p\" 2>/dev/null | grep -q . && echo \"port \$p \$(ss -Hltnp \"sport = :\$p\" | grep -o 'users:.*' | head -1)\"
      done
    fi
    if [ $(q "${DEVICE:-cuda}") != cpu ]; then
      n=\$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); echo \"gpus \$n\"
    fi
    if [ -n $(q "${NCCL_SOCKET_IFNAME:-}") ] && [ $NNODES = 2 ]; then
      ip link show dev $(q "${NCCL_SOCKET_IFNAME:-}") >/dev/null 2>&1 || echo 'noiface'
      [ $rank = 0 ] && ! ip -o -4 addr show dev $(q "${NCCL_SOCKET_IFNAME:-}") 2>/dev/null | grep -qw $(q "${MASTER_ADDR:-}") && echo 'nomaster'
      for h in \$(echo $(q "${NCCL_IB_HCA:-}") | tr ',' ' '); do h=\${h#[=^]}; h=\${h%%:*}; [ -e /sys/class/infiniband/\$h ] || echo \"nohca \$h\"; done
    fi
    true"
}
declare -A model version
for r in "${nodes[@]}"; do
  name=$(node_name "$r")
  facts=$(node_facts "$r") || { problem "$name: the checks could not run"; continue; }
  while read -r key val; do
    case "$key" in
      model)
        model[$r]=$val
        [ "$val" != missing ] || problem "$name: MODEL_DIR $MODEL_DIR has no config.json there.
    fix: copy the checkpoint to the same path on every node (e.g. rsync -a $MODEL_DIR/ worker:$MODEL_DIR/), or mount it there" ;;
      version)
        version[$r]=$val
        if [ "$val" = missing ]; then
          if [ "$DSV4_MODE" = native ]; then problem "$name: DSV4_BIN ${DSV4_BIN:-} is not an executable (build or copy dsv4 there)"
          else problem "$name: image ${DSV4_IMAGE:-dsv4:cuda} not found (docker load / docker build it there, see docs/deploy.md)"; fi
        fi ;;
      nocompose) problem "$name: docker-compose not found (apt-get install docker-compose)" ;;
      running) problem "$name: dsv4 rank $r is already running: scripts/stop-dsv4.sh first" ;;
      port) problem "$name: port ${val%% *} is in use ${val#* }: stop that process or change PORT / MASTER_PORT" ;;
      gpus) [ "$val" -ge 1 ] ||
        problem "$name: no GPU visible (nvidia-smi -L lists none): check the driver, or DEVICE=cpu for the CPU backend" ;;
      noiface) problem "$name: NCCL_SOCKET_IFNAME=$NCCL_SOCKET_IFNAME does not exist there (ip link; on a Spark ibdev2netdev shows the port names)" ;;
      nomaster) problem "$name: MASTER_ADDR=$MASTER_ADDR is not an address of $NCCL_SOCKET_IFNAME (ip -4 addr show $NCCL_SOCKET_IFNAME)" ;;
      nohca) problem "$name: NCCL_IB_HCA device $val not in /sys/class/infiniband (ibdev2netdev lists them)" ;;
    esac
  done <<<"$facts"
done
if [ "${#nodes[@]}" = 2 ]; then
  if [ -n "${model[0]:-}" ] && [ -n "${model[1]:-}" ] && [ "${model[0]}" != missing ] && [ "${model[1]}" != missing ] &&
     [ "${model[0]}" != "${model[1]}" ]; then
    problem "the checkpoints differ between the nodes (config.json, index or shard sizes at $MODEL_DIR): copy it again"
  fi
  if [ -n "${version[0]:-}" ] && [ "${version[0]}" != missing ] && [ "${version[1]:-missing}" != missing ] &&
     [ "${version[0]}" != "${version[1]}" ]; then
    problem "different dsv4 on the nodes (${version[0]} vs ${version[1]}): install the same build / image on both"
  fi
fi
if ((${#problems[@]})); then
  echo "preflight failed, nothing was started:" >&2
  for p in "${problems[@]}"; do echo "  - $p" >&2; done
  exit 1
fi
say "preflight OK ($DSV4_MODE mode, $NNODES node(s), model ${model[0]}, dsv4 ${version[0]})"

# ---- start: worker first (it waits for the rendezvous), then the head ----------------------------------------
stop_all() { local r; for r in 0 ${WORKER_SSH:+1}; do stop_node "$r" || true; done; }
failed() {  # failed RANK REASON
  echo "error: $2" >&2
  node_log_tail "$1" 40 >&2
  say "stopping both nodes"
  stop_all
  exit 1
}
for r in $(ranks); do
  stage_node "$r"
  start_node "$r" || failed "$r" "$(node_name "$r"): the start command failed"
  say "started rank $r on $(node_name "$r")"
done

url="http://127.0.0.1:$PORT/v1/models"
auth=()
[ -z "${API_KEY:-}" ] || auth=(-H "Authorization: Bearer $API_KEY")
timeout=${START_TIMEOUT:-1800}
t0=$(date +%s)
while :; do
  for r in $(ranks); do
    node_alive "$r" || failed "$r" "$(node_name "$r"): dsv4 rank $r exited during the start"
  done
  if curl -sf --max-time 5 "${auth[@]}" "$url" -o /dev/null; then break; fi
  if (($(date +%s) - t0 > timeout)); then
    for r in $(ranks); do node_log_tail "$r" 20 >&2; done
    failed 0 "no answer from $url after $timeout s (START_TIMEOUT)"
  fi
  sleep 2
done
say "serving: $url answered after $(($(date +%s) - t0)) s (clients: http://$([ "$NNODES" = 2 ] && echo "$MASTER_ADDR" || hostname -f):$PORT/v1)"
