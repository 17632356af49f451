#!/usr/bin/env bash
# Pipeline parallelism across two hosts: stage 0 (the head, HTTP) and stage 1 (a headless worker) in separate
# network namespaces joined by a veth pair, launched with the same flags as tensor parallelism. The pair serves a
# chat request through the head with the same greedy reply as one process, also two at once (two micro-batches);
# stopping the head stops the worker; a partition between the stages is reported within the timeout.
set -euo pipefail
BIN=${DSV4_BIN:?}
[ "$(id -u)" = 0 ] || { echo "FAIL: needs root for ip netns (CI runs as root)"; exit 1; }
command -v ip >/dev/null || { echo "FAIL: ip (iproute2) missing"; exit 1; }
T=$(mktemp -d)
H=dsv4ph$$ W=dsv4pw$$ VH=ph$$ VW=pw$$
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

wait_port() {  # log pid...: the port the server listens on
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
chat() {  # ns host port out
  ip netns exec "$1" curl -s --max-time 120 -o "$4" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d '{"model":"dsv4-tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":6,"temperature":0}' \
    "http://$2:$3/v1/chat/completions"
}
content() { grep -o '"content":"[^"]*"' "$1" | head -1; }

# The reference: one process on the head's host.
ip netns exec "$H" "$BIN" serve --device cpu --numerics exact --host "${NET}1" --port 0 >"$T/single.log" 2>&1 &
SINGLE=$!
PIDS+=("$SINGLE")
port=$(wait_port "$T/single.log" "$SINGLE") || fail "the single server did not start"
[ "$(chat "$H" "${NET}1" "$port" "$T/single.json")" = 200 ] || fail "single server: $(cat "$T/single.json")"
[ -n "$(content "$T/single.json")" ] || fail "no content in the single server's reply $(cat "$T/single.json")"
kill -TERM "$SINGLE"; wait "$SINGLE" || true
PIDS=()

ip netns exec "$H" "$BIN" serve --device cpu --numerics exact --host "${NET}1" --port 0 --pipeline-parallel-size 2 \
  --nnodes 2 --node-rank 0 --master-addr "${NET}1" --master-port 29610 >"$T/head.log" 2>&1 &
HEAD=$!
PIDS+=("$HEAD")
ip netns exec "$W" "$BIN" serve --device cpu --pipeline-parallel-size 2 --nnodes 2 --node-rank 1 --headless \
  --master-addr "${NET}1" --master-port 29610 >"$T/worker.log" 2>&1 &
WORKER=$!
PIDS+=("$WORKER")
port=$(wait_port "$T/head.log" "$HEAD" "$WORKER") || fail "the pipeline pair did not start"
grep -q "rank 1 of 2 connected .*addr=\[${NET}2\]" "$T/worker.log" || fail "the worker's mesh is not on the veth address"
grep -q "pipeline stage 0 of 2 (rank 0, layers .*, embedding)" "$T/head.log" || fail "the head is not stage 0"
grep -q "pipeline stage 1 of 2 (rank 1, layers .*, head)" "$T/worker.log" || fail "the worker is not stage 1"
# The client sits on the worker's host: everything crosses the veth pair.
code=$(chat "$W" "${NET}1" "$port" "$T/out.json")
[ "$code" = 200 ] || fail "chat through the two-host pipeline: HTTP $code $(cat "$T/out.json")"
grep -q '"completion_tokens":6' "$T/out.json" || fail "unexpected reply $(cat "$T/out.json")"
[ "$(content "$T/out.json")" = "$(content "$T/single.json")" ] ||
  fail "the pipeline's greedy reply $(content "$T/out.json") differs from one process's $(content "$T/single.json")"
# Two requests at once: the decode steps that hold both run them as two micro-batches in flight.
chat "$W" "${NET}1" "$port" "$T/a.json" >"$T/a.code" &
A=$!
chat "$W" "${NET}1" "$port" "$T/b.json" >"$T/b.code" &
B=$!
wait "$A" "$B" || fail "concurrent chats failed"
for r in a b; do
  [ "$(cat "$T/$r.code")" = 200 ] || fail "concurrent chat $r: $(cat "$T/$r.json")"
  [ "$(content "$T/$r.json")" = "$(content "$T/single.json")" ] || fail "concurrent chat $r: $(content "$T/$r.json")"
done
kill -TERM "$HEAD"
set +e; wait "$HEAD"; hrc=$?; wait "$WORKER"; wrc=$?; set -e
PIDS=()
[ "$hrc" = 0 ] || fail "the head exited $hrc on SIGTERM"
[ "$wrc" = 0 ] || fail "the worker exited $wrc after the head stopped"
grep -q "stopped by rank 0" "$T/worker.log" || fail "the worker did not stop on the head's word"

# A partition: the link between the stages goes down while a stream runs; the head reports it in the stream
# within the timeout (a stage-to-stage receive times out) and both exit non-zero.
ip netns exec "$H" "$BIN" serve --device cpu --host "${NET}1" --port 0 --pipeline-parallel-size 2 --nnodes 2 \
  --node-rank 0 --master-addr "${NET}1" --master-port 29611 --distributed-timeout 4 >"$T/head2.log" 2>&1 &
HEAD=$!
PIDS+=("$HEAD")
ip netns exec "$W" "$BIN" serve --device cpu --pipeline-parallel-size 2 --nnodes 2 --node-rank 1 --headless \
  --master-addr "${NET}1" --master-port 29611 --distributed-timeout 4 >"$T/worker2.log" 2>&1 &
WORKER=$!
PIDS+=("$WORKER")
port=$(wait_port "$T/head2.log" "$HEAD" "$WORKER") || fail "the second pair did not start"
ip netns exec "$H" curl -sN --max-time 60 -H 'Content-Type: application/json' \
  -d '{"model":"dsv4-tiny","messages":[{"role":"user","content":"go"}],"max_tokens":4000,"ignore_eos":true,"stream":true}' \
  "http://${NET}1:$port/v1/chat/completions" >"$T/stream.txt" &
CURL=$!
for _ in $(seq 1 200); do grep -q '"content"' "$T/stream.txt" 2>/dev/null && break; sleep 0.05; done
grep -q '"content"' "$T/stream.txt" || fail "the stream produced no tokens"
t0=$(date +%s)
ip -n "$W" link set "$VW" down
wait "$CURL" || true
t1=$(date +%s)
grep -q 'group failed in a pipeline' "$T/stream.txt" || fail "no error event after the partition: $(tail -c 300 "$T/stream.txt")"
[ $((t1 - t0)) -le 15 ] || fail "the partition took $((t1 - t0)) s to detect (timeout 4 s)"
set +e; wait "$HEAD"; hrc=$?; wait "$WORKER"; wrc=$?; set -e
PIDS=()
if [ "$hrc" -eq 0 ] || [ "$wrc" -eq 0 ]; then fail "after a partition both must exit non-zero (head $hrc, worker $wrc)"; fi
echo "reply: $(content "$T/out.json"); partition detected in $((t1 - t0)) s"
echo "PASS pp_netns"
