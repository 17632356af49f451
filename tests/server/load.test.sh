#!/usr/bin/env bash
# Load on loopback, bounded: 200 streaming chat requests, 16 at a time, on the demo model through the real
# engine, with a fixed time limit. Zero failures allowed; TTFT percentiles and throughput are printed and
# written to $DSV4_BINARY_DIR/server_load.json (docs/perf-notes.md, "## Server", records them).
source "$(dirname "$0")/lib.sh"
command -v node >/dev/null || fail "node is needed"
start_server load
OUT="${DSV4_BINARY_DIR:-$T}/server_load.json" DSV4_URL=$URL timeout 200 node "$SRC/tests/server/client/load.mjs" 200 16 16 180 \
  || fail "load test"
# The access log (and its counter) is written just after a response ends: give the last ones a moment.
for _ in $(seq 1 40); do
  curl -s "$URL/metrics" >"$T/metrics.txt"
  grep -q '^dsv4_http_requests_total{method="POST",endpoint="/v1/chat/completions",status="200"} 200$' "$T/metrics.txt" && break
  sleep 0.05
done
grep -q '^dsv4_http_requests_total{method="POST",endpoint="/v1/chat/completions",status="200"} 200$' "$T/metrics.txt" || fail "status counter"
grep -q '^dsv4_requests_finished_total{finished_reason="length"} 200$' "$T/metrics.txt" || fail "server did not count 200 finished requests"
grep -q '^dsv4_time_to_first_token_seconds_count 200$' "$T/metrics.txt" || fail "TTFT histogram count"
promtool check metrics <"$T/metrics.txt" || fail "promtool check metrics after load"
echo "load: all checks passed"
