#!/usr/bin/env bash
# Builds the libFuzzer target (clang, ASan + UBSan) into <build>/fuzz and runs it for FUZZ_SECONDS (60 by
# default in CI; docs/security.md records a longer run). Fails on any crash, leak or sanitizer report.
set -euo pipefail
SRC=${DSV4_SOURCE_DIR:?}
OUT=${DSV4_BINARY_DIR:?}/fuzz
SECONDS_TO_RUN=${FUZZ_SECONDS:-60}
command -v clang++ >/dev/null || { echo "FAIL: clang++ is missing (scripts/setup.sh installs clang)"; exit 1; }
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
if [ ! -f "$OUT/CMakeCache.txt" ]; then
  cmake -S "$SRC/tests/fuzz" -B "$OUT" "${GEN[@]}" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$OUT" -j"${FUZZ_JOBS:-2}" >/dev/null
# The corpus grows in the build folder; the seeds in the source tree stay as they are.
mkdir -p "$OUT/corpus"
cp -n "$SRC"/tests/fuzz/corpus/* "$OUT/corpus/" 2>/dev/null || true
cd "$OUT"
./http_request_fuzz -max_total_time="$SECONDS_TO_RUN" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 corpus 2>&1 | tail -n 25
echo "fuzz_http: no crash in ${SECONDS_TO_RUN} s"
