#!/usr/bin/env bash
# The official OpenAI SDK (npm openai, pinned 6.49.0 by tests/server/client/package-lock.json) against
# dsv4 serve: the demo model, and dsv4-test-server (scripted replies) for tool calls and reasoning.
source "$(dirname "$0")/lib.sh"
CLIENT="$SRC/tests/server/client"
command -v node >/dev/null && command -v npm >/dev/null || fail "node and npm are needed (scripts/setup.sh installs them)"
if ! (cd "$CLIENT" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error >"$T/npm.log" 2>&1); then
  cat "$T/npm.log"; fail "npm ci"
fi
start_server demo
DEMO_URL=$URL
start_test_server scripted "$CLIENT/scripted.json" --served-model-name dsv4-tiny
DSV4_URL=$DEMO_URL DSV4_SCRIPTED_URL=$URL timeout 300 node --test-reporter=spec "$CLIENT/openai_client.test.mjs" \
  || fail "openai client tests"
echo "openai_client: all checks passed"
