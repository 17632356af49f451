#!/usr/bin/env bash
# Two hosts: a head and a worker node in separate network namespaces joined by a veth pair (nothing on
# loopback between them). The pair serves a chat request through the head; stopping the head stops the worker.
set -euo pipefail
BIN=${DSV4_BIN:?}
[ "$(id -u)" = 0 ] || { echo "FAIL: needs root for ip netns (CI runs as root)"; exit 1; }
command -v ip >/dev/null || { echo "FAIL: ip (iproute2) missing"; exit 1; }
T=$(mktemp -d)
H=dsv4h$$ W=dsv4w$$ VH=vh$$ VW=vw$$
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

ip netns exec "$H" "$BIN" serve --device cpu --numerics exact --host "${NET}1" --port 0 --tensor-parallel-size 2 \
  --nnodes 2 --node-rank 0 --master-addr "${NET}1" --master-port 29600 >"$T/head.log" 2>&1 &
HEAD=$!
PIDS+=("$HEAD")
ip netns exec "$W" "$BIN" serve --device cpu --tensor-parallel-size 2 --nnodes 2 --node-rank 1 --headless \
  --master-addr "${NET}1" --master-port 29600 >"$T/worker.log" 2>&1 &
WORKER=$!
PIDS+=("$WORKER")
port=""
for _ in $(seq 1 900); do
  port=$(grep -o "listening on http://${NET}1:[0-9]*" "$T/head.log" | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  kill -0 "$HEAD" 2>/dev/null || fail "the head exited"
  kill -0 "$WORKER" 2>/dev/null || fail "the worker exited"
  sleep 0.1
done
[ -n "$port" ] || fail "the head did not start"
grep -q "rank 1 of 2 connected .*addr=\[${NET}2\]" "$T/worker.log" || fail "the worker's mesh is not on the veth address"
grep -q "rank 0 of 2 connected .*addr=\[${NET}1\]" "$T/head.log" || fail "the head's mesh is not on the veth address"
# The client sits on the worker's host: everything crosses the veth pair.
code=$(ip netns exec "$W" curl -s --max-time 120 -o "$T/out.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"model":"dsv4-tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":6,"temperature":0}' \
  "http://${NET}1:$port/v1/chat/completions")
[ "$code" = 200 ] || fail "chat through the two-host pair: HTTP $code $(cat "$T/out.json")"
grep -q '"completion_tokens":6' "$T/out.json" || fail "unexpected reply $(cat "$T/out.json")"
kill -TERM "$HEAD"
set +e; wait "$HEAD"; hrc=$?; wait "$WORKER"; wrc=$?; set -e
PIDS=()
[ "$hrc" = 0 ] || fail "the head exited $hrc on SIGTERM"
[ "$wrc" = 0 ] || fail "the worker exited $wrc after the head stopped"
grep -q "stopped by rank 0" "$T/worker.log" || fail "the worker did not stop on the head's word"

# A partition: the link between the hosts goes down while a stream runs; the head reports it in the stream.
ip netns exec "$H" "$BIN" serve --device cpu --host "${NET}1" --port 0 --tensor-parallel-size 2 --nnodes 2 \
  --node-rank 0 --master-addr "${NET}1" --master-port 29601 --distributed-timeout 4 >"$T/head2.log" 2>&1 &
HEAD=$!
PIDS+=("$HEAD")
ip netns exec "$W" "$BIN" serve --device cpu --tensor-parallel-size 2 --nnodes 2 --node-rank 1 --headless \
  --master-addr "${NET}1" --master-port 29601 --distributed-timeout 4 >"$T/worker2.log" 2>&1 &
WORKER=$!
PIDS+=("$WORKER")
port=""
for _ in $(seq 1 900); do
  port=$(grep -o "listening on http://${NET}1:[0-9]*" "$T/head2.log" | grep -o '[0-9]*$' || true)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || fail "the second pair did not start"
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
grep -q 'tensor-parallel group failed' "$T/stream.txt" || fail "no error event after the partition: $(tail -c 300 "$T/stream.txt")"
[ $((t1 - t0)) -le 15 ] || fail "the partition took $((t1 - t0)) s to detect (timeout 4 s)"
set +e; wait "$HEAD"; hrc=$?; wait "$WORKER"; wrc=$?; set -e
PIDS=()
if [ "$hrc" -eq 0 ] || [ "$wrc" -eq 0 ]; then fail "after a partition both must exit non-zero (head $hrc, worker $wrc)"; fi
echo "PASS tp_netns"
