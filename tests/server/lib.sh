# shellcheck shell=bash disable=SC2034
# Shared by the server test scripts (sourced): start `dsv4 serve` on a free loopback port, JSON checks.
set -euo pipefail
BIN=${DSV4_BIN:?}
TEST_SERVER_BIN=${DSV4_TEST_SERVER_BIN:-$(dirname "$BIN")/dsv4-test-server}
SRC=${DSV4_SOURCE_DIR:?}
T=$(mktemp -d)
SERVER_PIDS=()
cleanup() {
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for l in "$T"/*.log; do [ -f "$l" ] && { echo "--- $l"; tail -15 "$l"; }; done
  exit 1
}

# start_server NAME [serve flags...]: port 0 (the server prints the one it got); sets URL and PID, waits for
# /health. Logs go to $T/NAME.log.
start_server() { launch_server "$1" "$BIN" serve "${@:2}"; }
# start_test_server NAME SCRIPT [serve flags...]: the same on dsv4-test-server, replaying SCRIPT's replies.
start_test_server() { launch_server "$1" "$TEST_SERVER_BIN" --scripted-output "$2" "${@:3}"; }
launch_server() {
  local name=$1; shift
  local log="$T/$name.log" port=""
  "$@" --host 127.0.0.1 --port 0 >"$log" 2>&1 &
  PID=$!
  SERVER_PIDS+=("$PID")
  for _ in $(seq 1 900); do  # up to 90 s: the demo model may be created first
    port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    [ -n "$port" ] && break
    kill -0 "$PID" 2>/dev/null || fail "server $name exited"
    sleep 0.1
  done
  [ -n "$port" ] || fail "server $name did not start"
  URL="http://127.0.0.1:$port"
  curl -sf --max-time 10 "$URL/health" >/dev/null || fail "server $name: /health"
}

# post PATH JSON [curl args...]: body to $T/out.json, HTTP status to stdout.
post() {
  local path=$1 body=$2; shift 2
  curl -s --max-time 120 -o "$T/out.json" -w '%{http_code}' -H 'Content-Type: application/json' "$@" \
    -d "$body" "$URL$path"
}

# jq-like checks with python3: `j` is the parsed JSON file (and `k` the optional second one); the
# expression must be true. Texts are compared in Python, never through shell strings.
jcheck() {  # jcheck FILE 'python expression on j [and k]' 'what' [FILE2]
  python3 - "$1" "$2" "${4:-}" <<'PY' || fail "$3: $(head -c 600 "$1")"
import json, sys
j = json.load(open(sys.argv[1], encoding="utf-8"))
k = json.load(open(sys.argv[3], encoding="utf-8")) if sys.argv[3] else None
sys.exit(0 if eval(sys.argv[2]) else 1)
PY
}
jget() {  # jget FILE 'python expression on j': prints the value (JSON for non-strings)
  python3 - "$1" "$2" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
v = eval(sys.argv[2])
print(v if isinstance(v, str) else json.dumps(v))
PY
}

# stop_case RESPONSE 'text expression on j' REQUEST_JSON FIELD: a request asking for the same output with a stop
# string taken from the middle of the response's text; prints {"request", "stop", "prefix"} (the text before
# the stop string's first occurrence).
stop_case() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
j = json.load(open(sys.argv[1], encoding="utf-8"))
text = eval(sys.argv[2])
n = len(text)
stop = text[n // 2:n // 2 + 3]
req = json.loads(sys.argv[3])
req[sys.argv[4]] = [stop]
print(json.dumps({"request": req, "stop": stop, "prefix": text[:text.find(stop)]}))
PY
}

# sse_json FILE: the data: payloads of an event stream as one JSON array (without [DONE]).
sse_json() {
  python3 - "$1" <<'PY'
import json, sys
out = [json.loads(l[6:]) for l in open(sys.argv[1], encoding="utf-8") if l.startswith("data: ") and l.strip() != "data: [DONE]"]
print(json.dumps(out))
PY
}

expect_status() {  # expect_status WANT GOT what
  [ "$2" = "$1" ] || fail "$3: HTTP $2, expected $1: $(head -c 600 "$T/out.json")"
}
