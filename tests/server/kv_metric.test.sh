#!/usr/bin/env bash
# Issue 9, item 11, through the real engine: after long prompts finish, their prefix-cache blocks are
# reported as reusable, and the KV usage of the idle server is 0 (it used to report ~0.97).
source "$(dirname "$0")/lib.sh"
start_server kv --kv-cache-memory 64MiB --max-model-len 16384  # a small cache: the context must fit it
metric() { curl -s "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
LONG=$(python3 -c "print(' '.join('word%d' % i for i in range(300)))")
code=$(post /v1/completions "{\"prompt\":\"1 $LONG\",\"max_tokens\":2}")
expect_status 200 "$code" "long prompt"
reusable=$(metric dsv4_kv_cache_blocks_reusable)
usage=$(metric dsv4_kv_cache_usage_ratio)
[ "${reusable%.*}" -ge 1 ] || fail "no reusable prefix-cache blocks reported ($reusable)"
[ "$usage" = 0 ] || fail "an idle server reports KV usage $usage with $reusable reusable blocks"
echo "kv_metric: idle usage $usage, $reusable reusable prefix-cache blocks"
