#!/usr/bin/env bash
# Long-context memory and chunk-size invariance on the CPU backend (issue 17; a benchmark, not CI: minutes to hours).
# For each prompt length: a prefill in chunks of CHUNK then DECODE greedy steps under /usr/bin/time -v (peak RSS
# against the printed memory plan), and at the lengths in CHECK_LENGTHS a second run in chunks of CHUNK2 whose
# last-position logits must equal the first run's byte for byte.
# usage: bench/long_context.sh MODEL_DIR OUT_DIR "LENGTHS" [CHUNK [CHUNK2 [DECODE ["CHECK_LENGTHS"]]]]
#   e.g. bench/long_context.sh build/tiny-model /tmp/lc "8192 16384 32768" 2048 1536 8 "16384"
set -euo pipefail
model=${1:?model dir}
out=${2:?output dir}
lengths=${3:?lengths}
chunk=${4:-2048}
chunk2=${5:-1536}
decode=${6:-8}
check=${7:-}
bench=${LONG_CONTEXT_BENCH:-build/long_context_bench}
mkdir -p "$out"
printf '%-9s %-7s %12s %10s %14s %14s %12s\n' length chunk prefill_s decode_ms peak_rss_MB plan_total_MB rss-plan_MB
run() {  # length chunk tag
  local log="$out/run_$1_$2.log"
  /usr/bin/time -v "$bench" "$model" "$1" "$2" "$decode" "$out/logits_$1_$2.f32" >"$log" 2>&1
  local rss plan pre dec
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  plan=$(sed -n 's/.*plan total \([0-9]*\) B.*/\1/p' "$log")
  pre=$(sed -n 's/.*prefill \([0-9.]*\) s.*/\1/p' "$log")
  dec=$(sed -n 's/.*steps \([0-9.]*\) ms\/token.*/\1/p' "$log")
  printf '%-9s %-7s %12s %10s %14.1f %14.1f %+12.1f\n' "$1" "$2" "$pre" "$dec" "$(echo "$rss / 1000" | bc -l)" \
    "$(echo "$plan / 1000000" | bc -l)" "$(echo "$rss / 1000 - $plan / 1000000" | bc -l)"
}
for L in $lengths; do
  run "$L" "$chunk"
done
for L in $check; do
  [[ -f "$out/logits_${L}_${chunk}.f32" ]] || run "$L" "$chunk"
  run "$L" "$chunk2"
  if cmp -s "$out/logits_${L}_${chunk}.f32" "$out/logits_${L}_${chunk2}.f32"; then
    echo "length $L: last-position logits identical with chunks of $chunk and $chunk2"
  else
    echo "length $L: last-position logits DIFFER between chunks of $chunk and $chunk2"
    exit 1
  fi
done
