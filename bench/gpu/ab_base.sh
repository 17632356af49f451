#!/usr/bin/env bash
# Before/after on one device call: the package's *_base binaries (package.sh BASELINE_DIR=...) against the
# current ones on the same machine: cuda_ops_bench's decode linears, then forward_bench decode and prefill.
#   bench/gpu/ab_base.sh OUT_DIR [LAYERS] [BATCHES] [CONTEXT] [PREFILL]
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${1:?out dir}
LAYERS=${2:-30} BATCHES=${3:-1,16} C=${4:-1024} PF=${5:-8192}
BIN=${BIN:-gpu-pkg/bin}
mkdir -p "$OUT"
. bench/gpu/env.sh
[ -x "$BIN/forward_bench_base" ] || { echo "ab_base: no $BIN/forward_bench_base (package.sh BASELINE_DIR=...)"; exit 1; }
echo "baseline: $(cat gpu-pkg/baseline_commit 2>/dev/null || echo '?')"
for v in base new; do
  s=""; [ "$v" = base ] && s=_base
  "$BIN/cuda_ops_bench$s" --quick >"$OUT/ops_$v.log" 2>&1
  echo "== cuda_ops_bench $v"; grep -E "^(read bandwidth|wq_|wkv|wo_|expert)" "$OUT/ops_$v.log" | grep -E " 1 | 16 |bandwidth"
done
for v in base new; do
  s=""; [ "$v" = base ] && s=_base
  "$BIN/forward_bench$s" --device cuda --layers "$LAYERS" --batches "$BATCHES" --contexts "$C" --prefill "$PF" \
    --no-profile >"$OUT/fb_$v.log" 2>&1
  echo "== forward_bench $v"; grep -E "^(decode|prefill)" "$OUT/fb_$v.log"
done
