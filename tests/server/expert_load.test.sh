#!/usr/bin/env bash
# Expert load statistics through the real engine on a made model with skewed routing: /metrics carries the
# per-layer imbalance gauges (promtool-clean), GET /expert_load the counts, and `dsv4 expert-load` prints them
# with the rank loads of expert parallelism by id and under the EPLB placement.
source "$(dirname "$0")/lib.sh"
"$BIN" make-tiny --out "$T/skew" --route-skew 2 --tokenizer "$SRC/assets/tokenizer/tokenizer.json" >"$T/make.log" 2>&1 ||
  fail "make-tiny --route-skew"
start_server el --model "$T/skew" --device cpu --expert-load-window 50
code=$(post /v1/completions '{"prompt":"The quick brown fox jumps over the lazy dog","max_tokens":6,"temperature":0}')
expect_status 200 "$code" "completion"
curl -sf "$URL/metrics" >"$T/metrics.txt" || fail "/metrics"
promtool check metrics <"$T/metrics.txt" >"$T/promtool.log" 2>&1 || fail "promtool: $(cat "$T/promtool.log")"
python3 - "$T/metrics.txt" <<'PY' || fail "expert load gauges: $(grep expert_load "$T/metrics.txt")"
import re, sys
text = open(sys.argv[1]).read()
assert re.search(r"^# TYPE dsv4_expert_load_imbalance gauge$", text, re.M)
assert re.search(r"^dsv4_expert_load_window_steps 50$", text, re.M)
steps = int(re.search(r"^dsv4_expert_load_steps (\d+)$", text, re.M).group(1))
assert 2 <= steps <= 50, steps  # a prefill and decodes
layers = {int(m.group(1)): float(m.group(2))
          for m in re.finditer(r'^dsv4_expert_load_imbalance\{layer="(\d+)"\} (\S+)$', text, re.M)}
assert sorted(layers) == [0, 1, 2, 3], layers
assert all(v > 1.5 for v in layers.values()), layers  # skewed routing
PY
curl -sf "$URL/expert_load" >"$T/load.json" || fail "GET /expert_load"
jcheck "$T/load.json" 'j["layers"] == 4 and j["experts"] == 8 and j["window_steps"] == 50 and len(set(sum(r) for r in j["counts"])) == 1 and sum(j["counts"][0]) % 2 == 0 and sum(j["counts"][0]) > 0' \
  "every layer routes the same tokens, 2 experts each"
"$BIN" expert-load --url "$URL" --ep-size 2 --num-redundant-experts 2 >"$T/table.txt" 2>"$T/cli.log" || fail "dsv4 expert-load"
grep -q "EPLB +2" "$T/table.txt" || fail "table: $(cat "$T/table.txt")"
[ "$(grep -cE '^ +[0-3] ' "$T/table.txt")" = 4 ] || fail "table rows: $(cat "$T/table.txt")"
"$BIN" expert-load --url "$URL" --json >"$T/cli.json" || fail "dsv4 expert-load --json"
jcheck "$T/cli.json" 'j["counts"] == k["counts"]' "the CLI prints the server's counts" "$T/load.json"
kill "$PID"; wait "$PID" 2>/dev/null || true
# Counting off: no gauges, and the endpoint says how to turn it on.
start_server off --model "$T/skew" --device cpu --expert-load-window 0
code=$(curl -s -o "$T/off.json" -w '%{http_code}' "$URL/expert_load")
[ "$code" = 404 ] || fail "/expert_load with counting off: HTTP $code"
grep -q "expert-load-window" "$T/off.json" || fail "no hint: $(cat "$T/off.json")"
curl -sf "$URL/metrics" >"$T/off.txt" || fail "/metrics with counting off"
if grep -q dsv4_expert_load "$T/off.txt"; then fail "gauges with counting off"; fi
echo "PASS expert_load"
