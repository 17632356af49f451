# shellcheck shell=bash
# Sourced by the two-host tests (tp_netns, pp_netns): a head and a worker host in separate network namespaces
# joined by a veth pair (nothing on loopback between them), a temp dir, cleanup, and the steps both tests take.
# Before sourcing: NETNS_TAG, a short tag that keeps the namespace and link names apart between the tests.
set -euo pipefail
BIN=${DSV4_BIN:?}
[ "$(id -u)" = 0 ] || { echo "FAIL: needs root for ip netns (CI runs as root)"; exit 1; }
command -v ip >/dev/null || { echo "FAIL: ip (iproute2) missing"; exit 1; }
T=$(mktemp -d)
H=dsv4${NETNS_TAG:?}h$$ W=dsv4${NETNS_TAG}w$$ VH=${NETNS_TAG}h$$ VW=${NETNS_TAG}w$$
NET=10.$((100 + $$ % 100)).$(($$ / 100 % 250)).
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$H" 2>/dev/null || true
  ip netns del "$W" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for l in "$T"/*.log; do [ -f "$l" ] && { echo "--- $l"; tail -20 "$l"; }; done
  exit 1
}
ip netns add "$H"
ip netns add "$W"
ip link add "$VH" type veth peer name "$VW"
ip link set "$VH" netns "$H"
ip link set "$VW" netns "$W"
ip -n "$H" addr add "${NET}1/24" dev "$VH"
ip -n "$W" addr add "${NET}2/24" dev "$VW"
for ns in "$H" "$W"; do ip -n "$ns" link set lo up; done
ip -n "$H" link set "$VH" up
ip -n "$W" link set "$VW" up

wait_port() {  # log pid...: the port the server listens on; fails if a pid exits first
  local log=$1 p=""
  shift
  for _ in $(seq 1 900); do
    p=$(grep -o "listening on http://[0-9.]*:[0-9]*" "$log" | grep -o '[0-9]*$' || true)
    [ -n "$p" ] && { echo "$p"; return; }
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null || return 1; done
    sleep 0.1
  done
  return 1
}

# start_pair SUFFIX MASTER_PORT HEAD_ONLY ARGS...: the head (HTTP on the veth address; plus the words of
# HEAD_ONLY) and a headless worker node, both with ARGS; sets HEAD, WORKER and PORT; logs head/worker$SUFFIX.log.
start_pair() {
  local s=$1 mp=$2 head_only
  read -r -a head_only <<<"$3"
  shift 3
  ip netns exec "$H" "$BIN" serve --device cpu "${head_only[@]}" --host "${NET}1" --port 0 "$@" --nnodes 2 \
    --node-rank 0 --master-addr "${NET}1" --master-port "$mp" >"$T/head$s.log" 2>&1 &
  HEAD=$!
  PIDS+=("$HEAD")
  ip netns exec "$W" "$BIN" serve --device cpu "$@" --nnodes 2 --node-rank 1 --headless \
    --master-addr "${NET}1" --master-port "$mp" >"$T/worker$s.log" 2>&1 &
  WORKER=$!
  PIDS+=("$WORKER")
  PORT=$(wait_port "$T/head$s.log" "$HEAD" "$WORKER") || fail "the pair ($*) did not start"
}

# stop_pair SUFFIX: SIGTERM to the head stops both with status 0, the worker on the head's word.
stop_pair() {
  local s=$1 hrc wrc
  kill -TERM "$HEAD"
  set +e; wait "$HEAD"; hrc=$?; wait "$WORKER"; wrc=$?; set -e
  PIDS=()
  [ "$hrc" = 0 ] || fail "the head exited $hrc on SIGTERM"
  [ "$wrc" = 0 ] || fail "the worker exited $wrc after the head stopped"
  grep -q "stopped by rank 0" "$T/worker$s.log" || fail "the worker did not stop on the head's word"
}

# partition ERROR_TEXT: with a pair started, the link between the hosts goes down while a stream runs; the head
# reports ERROR_TEXT in the stream within 15 s and both exit non-zero. Sets PARTITION_S (seconds to detect).
partition() {
  local curl_pid t0 t1 hrc wrc
  ip netns exec "$H" curl -sN --max-time 60 -H 'Content-Type: application/json' \
    -d '{"model":"dsv4-tiny","messages":[{"role":"user","content":"go"}],"max_tokens":4000,"ignore_eos":true,"stream":true}' \
    "http://${NET}1:$PORT/v1/chat/completions" >"$T/stream.txt" &
  curl_pid=$!
  for _ in $(seq 1 200); do grep -q '"content"' "$T/stream.txt" 2>/dev/null && break; sleep 0.05; done
  grep -q '"content"' "$T/stream.txt" || fail "the stream produced no tokens"
  t0=$(date +%s)
  ip -n "$W" link set "$VW" down
  wait "$curl_pid" || true
  t1=$(date +%s)
  grep -q "$1" "$T/stream.txt" || fail "no error event after the partition: $(tail -c 300 "$T/stream.txt")"
  PARTITION_S=$((t1 - t0))
  [ "$PARTITION_S" -le 15 ] || fail "the partition took $PARTITION_S s to detect (timeout 4 s)"
  set +e; wait "$HEAD"; hrc=$?; wait "$WORKER"; wrc=$?; set -e
  PIDS=()
  if [ "$hrc" -eq 0 ] || [ "$wrc" -eq 0 ]; then fail "after a partition both must exit non-zero (head $hrc, worker $wrc)"; fi
}
