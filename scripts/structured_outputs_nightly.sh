#!/usr/bin/env bash
# Nightly structured-output sweep (too heavy for CI's 2 cores): every corpus schema in every form (JSON,
# named tool, required tool) with REQUESTS seeded requests each on the demo model, the auto-mode walk with
# as many runs, and the brute-force mask reference on PREFIXES prefixes per schema. Then the benchmark.
#   scripts/structured_outputs_nightly.sh [REQUESTS=200] [PREFIXES=20]
# A bounded run: fewer REQUESTS, or DSV4_GRAMMAR_ONLY=<tool name> for one corpus schema (every form).
# On 2 shared cores the demo model decodes ~1 step/s under load: REQUESTS=1 (105 requests) takes ~20 min.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-200}
PREFIXES=${2:-20}
cmake --build build -j"$(nproc)" --target test_runtime grammar_bench
DSV4_GRAMMAR_ALL=1 DSV4_GRAMMAR_REQUESTS=$REQUESTS DSV4_GRAMMAR_BRUTE_PREFIXES=$PREFIXES \
  build/test_runtime --gtest_filter='StructuredOutput.*:GrammarMask.*:Grammar.*'
build/grammar_bench build/tiny-model
