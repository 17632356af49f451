#!/usr/bin/env bash
# dsv4 parse-completion on hand-made completions: reasoning, content, tool calls (string and JSON values),
# a broken block, a truncated one, the EOS token, unknown tools, and the golden encoder outputs read back.
set -euo pipefail
BIN=${DSV4_BIN:?}
ENC=${DSV4_SHARED_DIR:?}/fixtures/encoding
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
check() {  # check FILE 'python expression on j' what
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if eval(sys.argv[2]) else 1)' "$1" "$2" \
    || fail "$3: $(cat "$1")"
}

printf 'Hello there.' >"$T/c1"
"$BIN" parse-completion --completion "$T/c1" >"$T/o1"
check "$T/o1" 'j == {"role": "assistant", "content": "Hello there.", "reasoning_content": None, "tool_calls": []}' "plain chat"

printf 'Think first.</think>The answer is 4.<｜end▁of▁sentence｜>' >"$T/c2"
"$BIN" parse-completion --completion "$T/c2" --thinking-mode thinking >"$T/o2"
check "$T/o2" 'j["reasoning_content"] == "Think first." and j["content"] == "The answer is 4."' "thinking + EOS"
"$BIN" parse-completion --completion - <"$T/c2" >"$T/o2b"
check "$T/o2b" 'j["reasoning_content"] is None and j["content"] == "Think first.</think>The answer is 4."' "chat mode keeps </think> as content"

cat >"$T/c3" <<'TXT'
Checking.

<｜DSML｜tool_calls>
<｜DSML｜invoke name="get_weather">
<｜DSML｜parameter name="city" string="true">Paris "rive gauche"</｜DSML｜parameter>
<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
<｜DSML｜parameter name="opts" string="false">{"units": ["c"], "x": null}</｜DSML｜parameter>
</｜DSML｜invoke>
<｜DSML｜invoke name="shell">
<｜DSML｜parameter name="cmd" string="true">ls -la
pwd</｜DSML｜parameter>
</｜DSML｜invoke>
</｜DSML｜tool_calls>
TXT
truncate -s -1 "$T/c3"  # the block ends at the marker (the model emits EOS next)
echo '[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}, {"type": "function", "function": {"name": "shell"}}]' >"$T/tools.json"
"$BIN" parse-completion --completion "$T/c3" --tools "$T/tools.json" >"$T/o3"
check "$T/o3" 'j["content"] == "Checking." and len(j["tool_calls"]) == 2' "two calls"
check "$T/o3" 'j["tool_calls"][0] == {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris \\\"rive gauche\\\"\", \"days\": 3, \"opts\": {\"units\": [\"c\"], \"x\": null}}"}}' "arguments text"
check "$T/o3" 'json.loads(j["tool_calls"][1]["function"]["arguments"]) == {"cmd": "ls -la\npwd"}' "multi-line string value"

echo '[{"type": "function", "function": {"name": "shell"}}]' >"$T/tools1.json"
set +e
"$BIN" parse-completion --completion "$T/c3" --tools "$T/tools1.json" >"$T/o4" 2>"$T/e4"
rc=$?
set -e
[ "$rc" = 2 ] || fail "unknown tool: exit $rc, expected 2"
grep -q "tool call to 'get_weather', which is not in" "$T/e4" || fail "unknown tool warning: $(cat "$T/e4")"

printf 'Ok.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a" string="maybe">1</｜DSML｜parameter>\n' >"$T/c5"
"$BIN" parse-completion --completion "$T/c5" >"$T/o5" 2>"$T/e5"
check "$T/o5" 'j["tool_calls"] == [] and j["content"].startswith("Ok.\n\n<｜DSML｜tool_calls>")' "a broken block is content"
grep -q "breaks the DSML grammar" "$T/e5" || fail "malformed warning: $(cat "$T/e5")"
printf 'Ok.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a" string="true">1' >"$T/c6"
"$BIN" parse-completion --completion "$T/c6" >"$T/o6" 2>"$T/e6"
check "$T/o6" 'j["tool_calls"] == [] and j["content"].endswith("string=\"true\">1")' "a truncated block is content"
grep -q "ends inside a tool-call block" "$T/e6" || fail "truncated warning: $(cat "$T/e6")"

# What the encoder writes for an assistant turn parses back: golden case 1's last assistant turn.
python3 - "$ENC/test_output_1.txt" "$T/c7" <<'PY'
import sys
p = open(sys.argv[1], encoding="utf-8").read()
start = p.find("<｜Assistant｜><think>") + len("<｜Assistant｜><think>")
open(sys.argv[2], "w", encoding="utf-8").write(p[start:p.find("<｜end▁of▁sentence｜>", start) + len("<｜end▁of▁sentence｜>")])
PY
"$BIN" parse-completion --completion "$T/c7" --thinking-mode thinking >"$T/o7"
check "$T/o7" 'j["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{\"location\": \"Beijing\", \"unit\": \"celsius\"}"} and j["content"] == ""' "golden case 1 round trip"

if "$BIN" parse-completion --completion "$T/nope" 2>"$T/e8"; then fail "missing file accepted"; fi
grep -q "cannot open" "$T/e8" || fail "missing file message: $(cat "$T/e8")"
echo "parse_completion: all checks passed"
