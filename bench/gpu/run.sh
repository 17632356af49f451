#!/usr/bin/env bash
# One command on a GPU machine (the device tool's H200): checks, then benchmarks, everything logged under
# $OUT (or ./gpu-out). Takes a carried package (bench/gpu/package.sh made it: stripped binaries, their shared
# libraries, the tiny-a fixture) or builds with CMake when none is there.
#   bench/gpu/run.sh [checks|bench|all]   (default all)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
WHAT=${1:-all}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
. bench/gpu/env.sh
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
if [ -d "$PKG/bin" ]; then
  BIN=$PKG/bin
  # Tests find ../shared by the absolute path they were built with; point it at the carried fixtures.
  SHARED_AT=$(cat "$PKG/shared_path")
  if [ ! -e "$SHARED_AT" ]; then mkdir -p "$(dirname "$SHARED_AT")" && ln -s "$PKG/shared" "$SHARED_AT"; fi
else
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a >"$OUT/cmake.log" 2>&1 &&
    ninja -C build-gpu >"$OUT/build.log" 2>&1 || { log "build failed"; tail -30 "$OUT/build.log"; exit 1; }
  BIN=build-gpu
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv | tee -a "$OUT/summary.txt"
rc=0
if [ "$WHAT" = checks ] || [ "$WHAT" = all ]; then
  log "conformance: every op, cuda vs the plain reference (test_kernels)"
  "$BIN/test_kernels" --gtest_brief=1 >"$OUT/test_kernels.log" 2>&1; r=$?; rc=$((rc | r))
  grep -E "PASSED|FAILED|Failure" "$OUT/test_kernels.log" | head -40 | tee -a "$OUT/summary.txt"
  log "golden, parity (tiny-a, mid-size model, engine) on cuda (test_model)"
  "$BIN/test_model" --gtest_brief=1 --gtest_filter='DeviceParity.*' >"$OUT/test_model.log" 2>&1; r=$?; rc=$((rc | r))
  grep -E "PASSED|FAILED|Failure|relative difference|Expected|Which is" "$OUT/test_model.log" | head -40 | tee -a "$OUT/summary.txt"
  log "compute-sanitizer memcheck on a short generation"
  printf '0 17 99 1234 5 6 7 8 9 10 11 12 13 14 15 16\n' >"$OUT/ids.txt"
  if command -v compute-sanitizer >/dev/null; then
    timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/dsv4" generate --device cuda \
      --model "$SHARED_AT/fixtures/tiny-a" --ids "$OUT/ids.txt" --max-new-tokens 6 >"$OUT/sanitizer.log" 2>&1
    r=$?; echo "compute-sanitizer exit $r" | tee -a "$OUT/summary.txt"; tail -5 "$OUT/sanitizer.log" | tee -a "$OUT/summary.txt"
  else
    log "compute-sanitizer not on PATH"
  fi
fi
if [ "$WHAT" = bench ] || [ "$WHAT" = all ]; then
  log "device ceilings and decode linears (cuda_ops_bench)"
  "$BIN/cuda_ops_bench" >"$OUT/cuda_ops_bench.log" 2>&1
  cat "$OUT/cuda_ops_bench.log" | tee -a "$OUT/summary.txt"
  BW_TB=$(sed -nE 's/^read bandwidth[^:]*: ([0-9.]+) TB\/s.*/\1/p' "$OUT/cuda_ops_bench.log" | head -1)
  BW=$(awk -v t="${BW_TB:-0}" 'BEGIN { if (t > 0) printf "%.0f", t * 1000 }')
  PK=$(sed -nE 's/^FP8 .*peak[^:]*: ([0-9.]+) TFLOP\/s.*/\1/p' "$OUT/cuda_ops_bench.log" | head -1)
  log "forward at full V4-Flash dimensions, dummy weights (read ${BW:-?} GB/s, FP8 peak ${PK:-?} TFLOP/s)"
  "$BIN/forward_bench" --device cuda --layers "${LAYERS:-36}" ${BW:+--read-gbs $BW} ${PK:+--peak-tflops $PK} \
    ${FORWARD_ARGS:-} 2>&1 | tee "$OUT/forward_bench.log" | tee -a "$OUT/summary.txt"
fi
exit $rc
