#!/usr/bin/env bash
# Coding agents, unmodified from npm (pinned in tests/server/agents/package-lock.json), headless against
# dsv4-test-server (the real HTTP stack; scripted replies stand in for the model so that a tool call must
# appear): Claude Code on /v1/messages and Codex CLI on /v1/responses each complete a turn and a shell-tool
# round trip under a model name of ours. The round trip is proven by the second reply, which the script
# gives only when the prompt holds the listing of a file that exists nowhere but in the work directory.
# Offline: both talk to localhost only (telemetry, updates and error reporting off, throwaway HOME).
source "$(dirname "$0")/lib.sh"
AG="$SRC/tests/server/agents"
command -v node >/dev/null && command -v npm >/dev/null || fail "node and npm are needed (scripts/setup.sh installs them)"
if ! (cd "$AG" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error >"$T/npm.log" 2>&1); then
  cat "$T/npm.log"; fail "npm ci in tests/server/agents"
fi
mkdir -p "$T/work" "$T/home"
touch "$T/work/marker_7f3a.txt"

# ---- Claude Code (Anthropic Messages API; it sends thinking: adaptive, so the replies reason first)
start_test_server claude "$AG/claude.json" --served-model-name dsv4-agent
CLAUDE_URL=$URL
claude() {
  (cd "$T/work" && env -i PATH="$PATH" HOME="$T/home" ANTHROPIC_BASE_URL="$CLAUDE_URL" ANTHROPIC_API_KEY=sk-local \
    ANTHROPIC_SMALL_FAST_MODEL=dsv4-agent ANTHROPIC_DEFAULT_HAIKU_MODEL=dsv4-agent \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1 DISABLE_ERROR_REPORTING=1 \
    timeout 120 "$AG/node_modules/.bin/claude" -p "$1" --output-format json --model dsv4-agent --allowedTools Bash) \
    >"$T/claude.out" 2>"$T/claude.log" || fail "claude -p '$1' exited $?: $(tail -c 600 "$T/claude.out")"
  python3 -c 'import json,sys; t=open(sys.argv[1]).read(); json.dump(json.loads(t[t.index("{"):]), open(sys.argv[2], "w"))' \
    "$T/claude.out" "$T/claude.json" || fail "claude output is not JSON: $(tail -c 600 "$T/claude.out")"
}
claude "say hello"
jcheck "$T/claude.json" 'not j["is_error"] and j["result"] == "Hello from dsv4."' "claude: a turn"
claude "zqx-list-files here"
jcheck "$T/claude.json" 'not j["is_error"] and j["result"] == "I saw marker_7f3a.txt in the listing." and j["num_turns"] >= 2' \
  "claude: Bash tool round trip"

# ---- Codex CLI (OpenAI Responses API, wire_api = "responses")
start_test_server codex "$AG/codex.json" --served-model-name dsv4-agent
mkdir -p "$T/codex"
cat >"$T/codex/config.toml" <<TOML
model = "dsv4-agent"
model_provider = "dsv4"
[model_providers.dsv4]
name = "dsv4"
base_url = "$URL/v1"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
TOML
codex() {
  (cd "$T/work" && env -i PATH="$PATH" HOME="$T/home" CODEX_HOME="$T/codex" \
    timeout 120 "$AG/node_modules/.bin/codex" exec --skip-git-repo-check --json "$1") \
    >"$T/codex.out" 2>"$T/codex.log" || fail "codex exec '$1' exited $?: $(tail -c 600 "$T/codex.out")"
}
last_message() {  # the final agent message of codex --json output
  python3 - "$T/codex.out" <<'PY'
import json, sys
msgs = []
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"): continue
    e = json.loads(line)
    item = e.get("item") or {}
    if e.get("type") == "item.completed" and item.get("type") == "agent_message": msgs.append(item.get("text", ""))
print(msgs[-1] if msgs else "")
PY
}
codex "say hello"
[ "$(last_message)" = "Hello from dsv4." ] || fail "codex: a turn: $(tail -c 800 "$T/codex.out")"
codex "zqx-list-files here"
grep -q '"command_execution"' "$T/codex.out" || fail "codex: no command ran: $(tail -c 800 "$T/codex.out")"
[ "$(last_message)" = "I saw marker_7f3a.txt in the listing." ] || fail "codex: shell round trip: $(tail -c 800 "$T/codex.out")"
echo "agents: all checks passed"
