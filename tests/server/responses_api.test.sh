#!/usr/bin/env bash
# The Responses API over HTTP with curl on dsv4-test-server: the request-id header, hosted tools dropped with a
# warning header, namespace flattening, text.format, the bounded store (eviction is a 404 for GET and for
# previous_response_id), cancel of a running stored response, and 400s naming the field; plus Anthropic system
# turns inside messages and count_tokens. (Event sequences and client use: tests/server/client.)
source "$(dirname "$0")/lib.sh"
start_test_server resp "$SRC/tests/server/responses.json" --max-stored-responses 2 --served-model-name m
J=(-H 'Content-Type: application/json')

# request-id: ours when the client sends none, the client's echoed otherwise.
curl -s -D "$T/h1.txt" -o "$T/out.json" "${J[@]}" -d '{"input":"hi"}' "$URL/v1/responses"
grep -qi '^x-request-id: req_' "$T/h1.txt" && grep -qi '^request-id: req_' "$T/h1.txt" || fail "request id headers: $(cat "$T/h1.txt")"
curl -s -D "$T/h2.txt" -o /dev/null "${J[@]}" -H 'x-request-id: abc-123' -d '{"input":"hi"}' "$URL/v1/responses"
grep -qi '^x-request-id: abc-123' "$T/h2.txt" || fail "client request id echoed: $(cat "$T/h2.txt")"
curl -s -D "$T/h3.txt" -o /dev/null "${J[@]}" -d '{"model":"m","messages":[{"role":"user","content":"x"}]}' "$URL/v1/chat/completions"
grep -qi '^x-request-id: req_' "$T/h3.txt" || fail "request id on chat completions"

# Hosted tools: dropped, named in x-dsv4-warning; namespaces flattened, the call reports its namespace.
TOOLS='[{"type":"web_search"},{"type":"function","name":"exec_command","parameters":{"type":"object"}},{"type":"namespace","name":"agents","description":"d","tools":[{"type":"function","name":"spawn_agent","parameters":{"type":"object"}}]}]'
curl -s -D "$T/h4.txt" -o "$T/out.json" "${J[@]}" -d "{\"input\":\"zqx-ns\",\"tools\":$TOOLS}" "$URL/v1/responses"
grep -qi '^x-dsv4-warning: dropped hosted tools the server cannot run: web_search' "$T/h4.txt" || fail "hosted tool warning: $(cat "$T/h4.txt")"
jcheck "$T/out.json" '[o for o in j["output"] if o["type"] == "function_call"] == [{"type": "function_call", "id": o["id"], "call_id": o["call_id"], "name": "spawn_agent", "arguments": "{\"task\": \"review\"}", "status": "completed", "namespace": "agents"} for o in j["output"] if o["type"] == "function_call"] and len(j["output"]) == 2' "namespace call"
expect_status 400 "$(post /v1/responses "{\"input\":\"x\",\"tools\":[{\"type\":\"function\",\"name\":\"a\"},{\"type\":\"namespace\",\"name\":\"n\",\"tools\":[{\"type\":\"function\",\"name\":\"a\"}]}]}")" "duplicate tool"
jcheck "$T/out.json" 'j["error"]["param"] == "tools[1].tools[0].name"' "duplicate tool names the field"
expect_status 400 "$(post /v1/responses '{"input":"x","tool_choice":{"type":"web_search"}}')" "hosted tool_choice"
expect_status 400 "$(post /v1/responses '{"input":"x","tools":[{"type":"teleport"}]}')" "unknown tool type"
jcheck "$T/out.json" 'j["error"]["param"] == "tools[0].type"' "unknown tool type names the field"

# text.format json_schema becomes the prompt's response format; the output is the model's text.
expect_status 200 "$(post /v1/responses '{"input":"zqx-json","text":{"format":{"type":"json_schema","name":"r","schema":{"type":"object"}}}}')" "json_schema"
jcheck "$T/out.json" 'j["output"][0]["content"][0]["text"] == "{\"ok\": true}" and j["text"]["format"]["type"] == "json_schema"' "text.format echoed"
expect_status 400 "$(post /v1/responses '{"input":"x","text":{"format":{"type":"yaml"}}}')" "bad text.format"
jcheck "$T/out.json" 'j["error"]["param"] == "text.format.type"' "text.format.type named"
expect_status 400 "$(post /v1/responses '{"input":"x","reasoning":{"effort":"extreme"}}')" "bad effort"
jcheck "$T/out.json" 'j["error"]["param"] == "reasoning.effort"' "reasoning.effort named"
expect_status 400 "$(post /v1/responses '{"input":[{"type":"function_call","name":"f","arguments":"{}"}]}')" "call without call_id"
jcheck "$T/out.json" 'j["error"]["param"] == "input[0].call_id"' "input[0].call_id named"
expect_status 400 "$(post /v1/responses '{"input":"x","background":true}')" "background"
expect_status 400 "$(post /v1/responses '{}')" "no input"
jcheck "$T/out.json" 'j["error"]["param"] == "input"' "input named"
expect_status 200 "$(post /v1/responses '{"input":"x","max_output_tokens":2}')" "max_output_tokens"
jcheck "$T/out.json" 'j["status"] == "incomplete" and j["incomplete_details"] == {"reason": "max_output_tokens"} and j["usage"]["output_tokens"] == 2' "incomplete at max_output_tokens"

# The store holds 2 (--max-stored-responses 2): the oldest is evicted, a clear 404 for GET and continuation.
ids=()
for i in 1 2 3; do
  expect_status 200 "$(post /v1/responses "{\"input\":\"turn $i\"}")" "store $i"
  ids+=("$(jget "$T/out.json" 'j["id"]')")
done
[ "$(curl -s -o "$T/out.json" -w '%{http_code}' "$URL/v1/responses/${ids[0]}")" = 404 ] || fail "evicted response: GET should be 404"
jcheck "$T/out.json" '"not found" in j["error"]["message"]' "evicted GET message"
[ "$(curl -s -o "$T/out.json" -w '%{http_code}' "$URL/v1/responses/${ids[2]}")" = 200 ] || fail "newest response kept"
expect_status 404 "$(post /v1/responses "{\"input\":\"x\",\"previous_response_id\":\"${ids[0]}\"}")" "evicted previous_response_id"
jcheck "$T/out.json" 'j["error"]["param"] == "previous_response_id" and "evicted" in j["error"]["message"]' "evicted continuation says so"
expect_status 200 "$(post /v1/responses '{"input":"x","store":false}')" "store false"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/responses/$(jget "$T/out.json" 'j["id"]')")" = 404 ] || fail "store:false is not kept"

# Cancel a running stored response: a second server whose model takes 25 ms a token (~1 s for the reply).
FAST_URL=$URL
start_test_server slow "$SRC/tests/server/responses_slow.json"
curl -sN --max-time 60 "${J[@]}" -d '{"input":"x","stream":true}' "$URL/v1/responses" >"$T/slow.txt" &
CURL=$!
rid=""
for _ in $(seq 1 300); do
  rid=$(grep -o '"id":"resp_[A-Za-z0-9]*"' "$T/slow.txt" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
  [ -n "$rid" ] && break
  sleep 0.01
done
[ -n "$rid" ] || fail "slow stream did not start"
[ "$(curl -s -o "$T/out.json" -w '%{http_code}' "$URL/v1/responses/$rid")" = 200 ] || fail "GET while running"
jcheck "$T/out.json" 'j["status"] == "in_progress"' "a running stored response shows in_progress"
expect_status 200 "$(post "/v1/responses/$rid/cancel" '{}')" "cancel"
jcheck "$T/out.json" 'j["status"] == "cancelled" and j["output"][0]["type"] == "message" and len(j["output"][0]["content"][0]["text"]) < 100' "cancelled with partial output"
wait "$CURL" || true
grep -q '^event: response.incomplete' "$T/slow.txt" && grep -q '"status":"cancelled"' "$T/slow.txt" \
  || fail "stream does not end cancelled: $(tail -c 300 "$T/slow.txt")"
[ "$(curl -s -o "$T/out.json" -w '%{http_code}' "$URL/v1/responses/$rid")" = 200 ] && jcheck "$T/out.json" 'j["status"] == "cancelled"' "stored as cancelled"
URL=$FAST_URL
expect_status 400 "$(post "/v1/responses/${ids[2]}/cancel" '{}')" "cancel a completed response"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$URL/v1/responses/${ids[2]}")" = 200 ] || fail "delete"
[ "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "$URL/v1/responses/${ids[2]}")" = 404 ] || fail "delete twice"

# Anthropic: a system turn inside messages (Claude Code's shape) renders where it stands; count_tokens agrees.
H=(-H 'anthropic-version: 2023-06-01')
A='{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"Hi"},{"role":"system","content":[{"type":"text","text":"Env"}]}]}'
expect_status 200 "$(post /v1/messages "$A" "${H[@]}")" "system turn in messages"
cp "$T/out.json" "$T/a.json"
expect_status 200 "$(post /v1/messages/count_tokens "$A" "${H[@]}")" "count_tokens with a system turn"
[ "$(jget "$T/out.json" 'j["input_tokens"]')" = "$(jget "$T/a.json" 'j["usage"]["input_tokens"]')" ] || fail "count_tokens != usage"
expect_status 400 "$(post /v1/messages '{"model":"m","max_tokens":8,"messages":[{"role":"system","content":[{"type":"image"}]}]}' "${H[@]}")" "bad system turn"
jcheck "$T/out.json" '"messages[0].content" in json.dumps(j)' "bad system turn names the field"
echo "responses_api: all checks passed"
