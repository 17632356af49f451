#!/usr/bin/env bash
# Pipeline parallelism across two hosts: stage 0 (the head, HTTP) and stage 1 (a headless worker) in separate
# network namespaces joined by a veth pair, launched with the same flags as tensor parallelism. The pair serves a
# chat request through the head with the same greedy reply as one process, also two at once (two micro-batches);
# stopping the head stops the worker; a partition between the stages is reported within the timeout.
# shellcheck disable=SC2034  # read by netns_lib.sh
NETNS_TAG=p
# shellcheck source=netns_lib.sh
source "$(dirname "$0")/netns_lib.sh"

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

start_pair "" 29610 "--numerics exact" --pipeline-parallel-size 2
port=$PORT
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
stop_pair ""

# A partition: the link between the stages goes down while a stream runs; the head reports it in the stream
# within the timeout (a stage-to-stage receive times out) and both exit non-zero.
start_pair 2 29611 "" --pipeline-parallel-size 2 --distributed-timeout 4
# The head sees the partition in a stage-to-stage transfer or in the next step-plan broadcast, whichever comes
# first (both seen); either way the stream ends with the group's failure.
partition 'group failed in \(a pipeline\|a step-plan broadcast\)'
echo "reply: $(content "$T/out.json"); partition detected in $PARTITION_S s"
echo "PASS pp_netns"
