#!/usr/bin/env bash
# dsv4 tokenize / detokenize / encode-chat through the real binary: outputs and error messages.
set -euo pipefail
BIN=${DSV4_BIN:?}
SRC=${DSV4_SOURCE_DIR:?}
ENC=${DSV4_SHARED_DIR:?}/fixtures/encoding
TOK=$SRC/assets/tokenizer/tokenizer.json
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
expect_error() {  # expect_error "message part" cmd...
  local want=$1; shift
  if out=$("$@" 2>&1); then fail "expected failure: $*"; fi
  grep -qF -- "$want" <<<"$out" || fail "expected '$want' in: $out"
}

# encode-chat needs no tokenizer: the four official golden pairs, byte for byte (1-3 thinking, 4 chat).
for i in 1 2 3; do
  "$BIN" encode-chat --request "$ENC/test_input_$i.json" --thinking-mode thinking >"$T/out_$i.txt"
  cmp -s "$T/out_$i.txt" "$ENC/test_output_$i.txt" || fail "encode-chat golden case $i"
done
"$BIN" encode-chat --request "$ENC/test_input_4.json" >"$T/out_4.txt"
cmp -s "$T/out_4.txt" "$ENC/test_output_4.txt" || fail "encode-chat golden case 4 (chat mode is the default)"
echo '{"messages": [{"role": "user", "content": "hi"}], "thinking_mode": "thinking", "reasoning_effort": "max"}' >"$T/req.json"
out=$("$BIN" encode-chat --request - <"$T/req.json")
[[ $out == "<｜begin▁of▁sentence｜>Reasoning Effort: Absolute maximum"* ]] || fail "reasoning effort prefix: $out"
[[ $out == *"<｜User｜>hi<｜Assistant｜><think>" ]] || fail "thinking generation prefix: $out"
out=$("$BIN" encode-chat --request "$T/req.json" --thinking-mode chat)
[[ $out == *"<｜User｜>hi<｜Assistant｜></think>" ]] || fail "--thinking-mode overrides the request: $out"
echo '[{"role": "robot", "content": "x"}]' >"$T/bad_role.json"
expect_error "unknown role 'robot'" "$BIN" encode-chat --request "$T/bad_role.json"
echo '{"messages": [' >"$T/broken.json"
expect_error "not valid JSON" "$BIN" encode-chat --request "$T/broken.json"
expect_error "cannot open" "$BIN" encode-chat --request "$T/nope.json"
expect_error "--reasoning-effort: medium not in" "$BIN" encode-chat --request "$T/req.json" --reasoning-effort medium
echo '{"messages": [], "reasoning_effort": "medium"}' >"$T/effort.json"
expect_error "invalid reasoning effort 'medium'" "$BIN" encode-chat --request "$T/effort.json"

if [ ! -f "$TOK" ]; then
  echo "SKIP tokenize/detokenize: no $TOK (run scripts/fetch_tokenizer.sh)"
  exit 0
fi

# tokenize --text: the spec's DSML example.
out=$("$BIN" tokenize --tokenizer "$TOK" --text '<｜DSML｜invoke name="f">')
[ "$out" = "[30,128825,40148,5406,2329,1281,72,3320]" ] || fail "tokenize --text: $out"
# --tokenizer also takes the directory holding tokenizer.json.
out=$("$BIN" tokenize --tokenizer "$(dirname "$TOK")" --text '<think>hi</think>')
[ "$out" = "[128821,6366,128822]" ] || fail "tokenize with a directory: $out"

# tokenize --jsonl: one output line per input line, equal to the golden ids (HF's).
golden=$SRC/tests/tokenizer/data/golden_cases.jsonl
if command -v python3 >/dev/null; then
  python3 - "$golden" "$T/in.jsonl" "$T/want.txt" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1], encoding="utf-8", newline="").read().split("\n")[1:] if l]
cases = [json.loads(l) for l in lines][::10]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for c in cases: f.write(json.dumps(c["text"], ensure_ascii=False) + "\n")
with open(sys.argv[3], "w") as f:
    for c in cases: f.write(json.dumps(c["ids"], separators=(",", ":")) + "\n")
EOF
  "$BIN" tokenize --tokenizer "$TOK" --jsonl "$T/in.jsonl" >"$T/got.txt"
  [ "$(wc -l <"$T/got.txt")" = "$(wc -l <"$T/in.jsonl")" ] || fail "tokenize --jsonl line count"
  cmp -s "$T/got.txt" "$T/want.txt" || fail "tokenize --jsonl differs from the golden ids"
fi
printf '"a"\n"b c"\n' | "$BIN" tokenize --tokenizer "$TOK" --jsonl - >"$T/two.txt"
[ "$(wc -l <"$T/two.txt")" = 2 ] || fail "tokenize --jsonl from stdin"

# detokenize: text back, --skip-special-tokens, --json, and all id spellings.
out=$("$BIN" detokenize --tokenizer "$TOK" --ids "128821 6366 128822")
[ "$out" = "<think>hi</think>" ] || fail "detokenize: $out"
out=$("$BIN" detokenize --tokenizer "$TOK" --ids "[128821,6366,128822]" --skip-special-tokens)
[ "$out" = "hi" ] || fail "detokenize --skip-special-tokens: $out"
out=$("$BIN" detokenize --tokenizer "$TOK" --ids "6366,201" --json)
[ "$out" = '"hi\n"' ] || fail "detokenize --json: $out"
ids=$("$BIN" tokenize --tokenizer "$TOK" --text $'中文 text\twith 😀 and 12345')
out=$("$BIN" detokenize --tokenizer "$TOK" --ids "$ids")
[ "$out" = $'中文 text\twith 😀 and 12345' ] || fail "tokenize/detokenize round trip: $out"

# encode-chat --tokenizer prints the prompt's ids.
out=$("$BIN" encode-chat --request "$ENC/test_input_2.json" --thinking-mode thinking --tokenizer "$TOK")
[[ $out == "[0,"* ]] || fail "encode-chat --tokenizer: $out"

# Errors.
expect_error "is not in the vocabulary" "$BIN" detokenize --tokenizer "$TOK" --ids "1 129280"
expect_error "'x1' is not an integer" "$BIN" detokenize --tokenizer "$TOK" --ids "1 x1"
expect_error "give --text or --jsonl" "$BIN" tokenize --tokenizer "$TOK"
expect_error "does not exist" "$BIN" tokenize --tokenizer "$T/missing.json" --text x
echo 'not json' >"$T/bad.jsonl"
expect_error "bad.jsonl:1: not a JSON string" "$BIN" tokenize --tokenizer "$TOK" --jsonl "$T/bad.jsonl"
echo '{"x": 1}' >"$T/bad2.jsonl"
expect_error "not a JSON string" "$BIN" tokenize --tokenizer "$TOK" --jsonl "$T/bad2.jsonl"
echo '{}' >"$T/empty_tok.json"
expect_error "unexpected tokenizer.json layout" "$BIN" tokenize --tokenizer "$T/empty_tok.json" --text x
echo "cli tokenizer tests: OK"
