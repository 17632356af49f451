#!/usr/bin/env bash
# A/B of the CUDA backend's tuning switches on decode (DSV4_CUDA_* in src/kernels/cuda/*.cu): one
# forward_bench per variant in the same call, so the variants share the machine's state; then per-kernel device
# time (kernel_times.sh) of the variants named in KT_VARIANTS.
#   bench/gpu/ab_decode.sh OUT_DIR [LAYERS] [BATCHES] [CONTEXT]
# Variants: "name:VAR=VAL,VAR=VAL" in AB_VARIANTS (default: the defaults, and no decode tensor-core GEMV).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${1:?out dir}
LAYERS=${2:-30} BATCHES=${3:-1,16} C=${4:-1024}
BIN=${BIN:-gpu-pkg/bin}
mkdir -p "$OUT"
. bench/gpu/env.sh
VARIANTS=${AB_VARIANTS-"default: nomma:DSV4_CUDA_GEMV_DECODE_MMA=0"}
for v in $VARIANTS; do
  name=${v%%:*} envs=${v#*:}
  (
    IFS=, read -r -a kv <<<"$envs"
    for e in "${kv[@]}"; do [ -n "$e" ] && export "${e?}"; done
    "$BIN/forward_bench" --device cuda --layers "$LAYERS" --batches "$BATCHES" --contexts "$C" --prefill "" \
      --no-profile >"$OUT/ab_$name.log" 2>&1
    echo "== $name (${envs:-defaults})"
    grep -E "^decode" "$OUT/ab_$name.log"
  )
done
for v in ${KT_VARIANTS:-}; do
  name=${v%%:*} envs=${v#*:} b=${KT_BATCH:-1}
  (
    IFS=, read -r -a kv <<<"$envs"
    for e in "${kv[@]}"; do [ -n "$e" ] && export "${e?}"; done
    mkdir -p "$OUT/kt_$name"
    echo "== kernel times $name B=$b (${envs:-defaults})"
    BIN=$BIN bash bench/gpu/kernel_times.sh "$OUT/kt_$name" 4 "$b" "$C" | head -25
  )
done
