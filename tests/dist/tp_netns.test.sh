#!/usr/bin/env bash
# Two hosts: a head and a worker node in separate network namespaces joined by a veth pair (nothing on
# loopback between them). The pair serves a chat request through the head; stopping the head stops the worker.
# shellcheck disable=SC2034  # read by netns_lib.sh
NETNS_TAG=t
# shellcheck source=netns_lib.sh
source "$(dirname "$0")/netns_lib.sh"

start_pair "" 29600 "--numerics exact" --tensor-parallel-size 2
grep -q "rank 1 of 2 connected .*addr=\[${NET}2\]" "$T/worker.log" || fail "the worker's mesh is not on the veth address"
grep -q "rank 0 of 2 connected .*addr=\[${NET}1\]" "$T/head.log" || fail "the head's mesh is not on the veth address"
# The client sits on the worker's host: everything crosses the veth pair.
code=$(ip netns exec "$W" curl -s --max-time 120 -o "$T/out.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  -d '{"model":"dsv4-tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":6,"temperature":0}' \
  "http://${NET}1:$PORT/v1/chat/completions")
[ "$code" = 200 ] || fail "chat through the two-host pair: HTTP $code $(cat "$T/out.json")"
grep -q '"completion_tokens":6' "$T/out.json" || fail "unexpected reply $(cat "$T/out.json")"
stop_pair ""

# A partition: the link between the hosts goes down while a stream runs; the head reports it in the stream.
start_pair 2 29601 "" --tensor-parallel-size 2 --distributed-timeout 4
partition 'tensor-parallel group failed'
echo "PASS tp_netns"
