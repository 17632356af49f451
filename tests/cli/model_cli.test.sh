#!/usr/bin/env bash
# dsv4 score / generate / inspect through the real binary: outputs and error messages.
set -euo pipefail
BIN=${DSV4_BIN:?}
TINY=${DSV4_SHARED_DIR:?}/fixtures/tiny-a
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
expect_error() {  # expect_error "message part" cmd...
  local want=$1; shift
  if out=$("$@" 2>&1); then fail "expected failure: $*"; fi
  grep -qF -- "$want" <<<"$out" || fail "expected '$want' in: $out"
}

echo "0 5 17 300 2047 9 9 9" > "$T/ids.txt"
"$BIN" score --model "$TINY" --ids "$T/ids.txt" --out "$T/l.bin" --numerics exact 2>/dev/null
[ "$(stat -c %s "$T/l.bin")" = $((8 * 2048 * 4)) ] || fail "score output size"
"$BIN" score --model "$TINY" --ids "$T/ids.txt" --out "$T/l1.bin" --numerics exact --chunk 1 2>/dev/null
[ "$(stat -c %s "$T/l1.bin")" = $((8 * 2048 * 4)) ] || fail "chunked score output size"
"$BIN" score --model "$TINY" --ids "$T/ids.txt" --out "$T/r.bin" 2>/dev/null  # reference numerics default
cmp -s "$T/l.bin" "$T/r.bin" && fail "reference numerics gave exact-mode logits"

gen=$("$BIN" generate --model "$TINY" --ids "$T/ids.txt" --max-new-tokens 5 --numerics exact)
[ "$(wc -w <<<"$gen")" = 5 ] || fail "generate printed '$gen'"
for t in $gen; do [ "$t" -ge 0 ] && [ "$t" -lt 2048 ] || fail "bad token $t"; done

out=$("$BIN" inspect --model "$TINY")
grep -q "^OK$" <<<"$out" || fail "inspect tiny-a: $out"
grep -q "parameters:" <<<"$out" || fail "inspect prints no parameter count"

echo "1 2 2048" > "$T/bad.txt"
expect_error "token id 2048 out of range" "$BIN" score --model "$TINY" --ids "$T/bad.txt" --out "$T/x.bin"
echo "1 two 3" > "$T/nan.txt"
expect_error "'two' is not an integer" "$BIN" score --model "$TINY" --ids "$T/nan.txt" --out "$T/x.bin"
: > "$T/empty.txt"
expect_error "empty input" "$BIN" generate --model "$TINY" --ids "$T/empty.txt"
expect_error "does not exist" "$BIN" score --model "$T/nope" --ids "$T/ids.txt" --out "$T/x.bin"
mkdir -p "$T/broken" && cp "$TINY/config.json" "$T/broken/" && head -c 1000 "$TINY/model.safetensors" > "$T/broken/model.safetensors"
expect_error "model.safetensors" "$BIN" score --model "$T/broken" --ids "$T/ids.txt" --out "$T/x.bin"
expect_error "header length" "$BIN" inspect --model "$T/broken"
expect_error "numerics" "$BIN" score --model "$TINY" --ids "$T/ids.txt" --out "$T/x.bin" --numerics fast
echo "model_cli: all checks passed"
