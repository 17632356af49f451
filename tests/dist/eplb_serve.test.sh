#!/usr/bin/env bash
# EPLB while serving: an expert-parallel pair on a made model with skewed routing rebalances every 2 steps while
# several greedy requests are in flight; every request completes, each text equals one rank's for the same
# prompt, the switches happened during the requests, and GET /expert_load / `dsv4 expert-load` report the rank
# loads measured under each placement served.
# shellcheck source=../server/lib.sh
source "$(dirname "$0")/../server/lib.sh"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
export OMP_NUM_THREADS=1  # two rank processes on a shared host
"$BIN" make-tiny --out "$T/skew" --route-skew 2 --tokenizer "$SRC/assets/tokenizer/tokenizer.json" >"$T/make.log" 2>&1 ||
  fail "make-tiny --route-skew"
PROMPTS=("The quick brown fox" "Once upon a time there was" "1, 2, 3, 4," "Hello world, this is")
N=${#PROMPTS[@]}
body() { python3 -c 'import json, sys; print(json.dumps({"prompt": sys.argv[1], "max_tokens": 24, "temperature": 0, "ignore_eos": True}))' "$1"; }

start_server eplb --model "$T/skew" --device cpu --numerics exact --tensor-parallel-size 2 --enable-expert-parallel \
  --enable-eplb --num-redundant-experts 2 --eplb-step-interval 2 --expert-load-window 4 --max-num-seqs "$N" \
  --master-port "$(free_port)"
grep -q "EPLB: 8 experts + 2 redundant slots per layer over 2 ranks" "$T/eplb.log" || fail "EPLB not on"
pids=()
for i in $(seq 0 $((N - 1))); do
  curl -s --max-time 120 -o "$T/eplb-$i.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "$(body "${PROMPTS[$i]}")" "$URL/v1/completions" >"$T/code-$i" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for i in $(seq 0 $((N - 1))); do
  [ "$(cat "$T/code-$i")" = 200 ] || fail "request $i under EPLB: HTTP $(cat "$T/code-$i")"
  jcheck "$T/eplb-$i.json" 'j["usage"]["completion_tokens"] == 24' "request $i: 24 tokens"
done
switches=$(grep -c "switching to placement" "$T/eplb.log" || true)
[ "$switches" -ge 3 ] || fail "only $switches placement switches while serving"
curl -sf "$URL/metrics" >"$T/metrics.txt" || fail "/metrics"
rebalances=$(awk '$1 == "dsv4_eplb_rebalances_total" {print $2}' "$T/metrics.txt")
[ "${rebalances:-0}" -ge 3 ] || fail "rebalance counter: $(grep eplb "$T/metrics.txt")"
grep -qE "^dsv4_eplb_rank_load_imbalance [0-9.]+$" "$T/metrics.txt" || fail "rank load gauge: $(grep eplb "$T/metrics.txt")"
if command -v promtool >/dev/null; then
  promtool check metrics <"$T/metrics.txt" >"$T/promtool.log" 2>&1 || fail "promtool: $(cat "$T/promtool.log")"
fi
curl -sf "$URL/expert_load" >"$T/load.json" || fail "GET /expert_load"
# The placements served: several, their steps add up to the steps counted, the start one is skewed, and one
# switched to after the start ran steps of 2 or more sequences (4 layers x 2 experts per row): a switch with
# requests in flight.
jcheck "$T/load.json" 'len(j["eplb"]) >= 4 and sum(e["steps"] for e in j["eplb"]) == j["total_steps"] and j["eplb"][0]["max_over_mean"] > 1.1 and any(e["placement"] > 0 and sum(e["rank_tokens"]) >= 16 * e["steps"] > 0 for e in j["eplb"])' \
  "EPLB placements on /expert_load"
"$BIN" expert-load --url "$URL" >"$T/table.txt" 2>"$T/cli.log" || fail "dsv4 expert-load"
grep -q "EPLB placements served" "$T/table.txt" || fail "table: $(cat "$T/table.txt")"
kill "$PID"; wait "$PID" 2>/dev/null || true

# One rank, the same prompts one at a time: the same greedy texts.
start_server one --model "$T/skew" --device cpu --numerics exact
for i in $(seq 0 $((N - 1))); do
  code=$(post /v1/completions "$(body "${PROMPTS[$i]}")")
  [ "$code" = 200 ] || fail "request $i on one rank: HTTP $code"
  jcheck "$T/out.json" 'j["choices"][0]["text"] == k["choices"][0]["text"]' "request $i: EPLB text = one rank's" \
    "$T/eplb-$i.json"
done
echo "PASS eplb_serve"
