#!/usr/bin/env bash
# The Anthropic Messages API over HTTP with curl on the demo model: messages (plain, streamed SSE event
# sequence, thinking blocks, stop sequences, tool_use / tool_result history), count_tokens, and errors in
# Anthropic's shape.
source "$(dirname "$0")/lib.sh"
start_server demo --served-model-name dsv4-tiny claude-test
H=(-H 'anthropic-version: 2023-06-01')

MSG='{"model":"claude-test","max_tokens":6,"temperature":0,"system":"You are terse.","messages":[{"role":"user","content":"Name a color."}]}'
expect_status 200 "$(post /v1/messages "$MSG" "${H[@]}")" "messages"
cp "$T/out.json" "$T/msg.json"
jcheck "$T/msg.json" 'j["type"] == "message" and j["role"] == "assistant" and j["id"].startswith("msg_") and j["model"] == "claude-test"' "message envelope"
jcheck "$T/msg.json" 'len(j["content"]) == 1 and j["content"][0]["type"] == "text" and len(j["content"][0]["text"]) > 0' "one text block"
jcheck "$T/msg.json" 'j["stop_reason"] == "max_tokens" and j["stop_sequence"] is None and j["usage"]["output_tokens"] == 6' "stop reason, usage"
expect_status 200 "$(post /v1/messages/count_tokens "$MSG" "${H[@]}")" "count_tokens"
[ "$(jget "$T/out.json" 'j["input_tokens"]')" = "$(jget "$T/msg.json" 'j["usage"]["input_tokens"] + j["usage"]["cache_read_input_tokens"]')" ] \
  || fail "count_tokens != usage input tokens"

# Streaming: the documented event sequence, and text deltas that add up to the non-streamed text.
curl -sN --max-time 60 "${H[@]}" -H 'Content-Type: application/json' -d "${MSG%\}},\"stream\":true}" "$URL/v1/messages" >"$T/s.txt"
grep '^event: ' "$T/s.txt" | cut -c8- | uniq | tr '\n' ' ' >"$T/events.txt"
[ "$(cat "$T/events.txt")" = "message_start ping content_block_start content_block_delta content_block_stop message_delta message_stop " ] \
  || fail "event sequence: $(cat "$T/events.txt")"
sse_json "$T/s.txt" >"$T/ev.json"
jcheck "$T/ev.json" 'j[0]["message"]["content"] == [] and j[0]["message"]["usage"]["input_tokens"] > 0' "message_start"
jcheck "$T/ev.json" '"".join(e["delta"]["text"] for e in j if e["type"] == "content_block_delta") == k["content"][0]["text"]' \
  "streamed text == non-streamed" "$T/msg.json"
jcheck "$T/ev.json" '[e for e in j if e["type"] == "message_delta"][0]["delta"]["stop_reason"] == "max_tokens" and [e for e in j if e["type"] == "message_delta"][0]["usage"]["output_tokens"] == 6' "message_delta"

# Thinking: a thinking block first (streamed as thinking_delta).
THINK='{"model":"dsv4-tiny","max_tokens":6,"temperature":0,"thinking":{"type":"enabled","budget_tokens":1024},"messages":[{"role":"user","content":"Why?"}]}'
expect_status 200 "$(post /v1/messages "$THINK" "${H[@]}")" "thinking"
jcheck "$T/out.json" 'j["content"][0]["type"] == "thinking" and len(j["content"][0]["thinking"]) > 0' "thinking block"
curl -sN --max-time 60 "${H[@]}" -H 'Content-Type: application/json' -d "${THINK%\}},\"stream\":true}" "$URL/v1/messages" >"$T/t.txt"
sse_json "$T/t.txt" >"$T/tev.json"
jcheck "$T/tev.json" '[e for e in j if e["type"] == "content_block_start"][0]["content_block"]["type"] == "thinking" and any(e["type"] == "content_block_delta" and e["delta"]["type"] == "thinking_delta" for e in j)' "streamed thinking"

# Stop sequences: cut the greedy text at a piece of its middle.
LONG='{"model":"dsv4-tiny","max_tokens":16,"temperature":0,"messages":[{"role":"user","content":"Tell me a story."}]}'
post /v1/messages "$LONG" >/dev/null
stop_case "$T/out.json" 'j["content"][0]["text"]' "$LONG" stop_sequences >"$T/stop.json"
expect_status 200 "$(post /v1/messages "$(jget "$T/stop.json" 'j["request"]')")" "stop_sequences"
jcheck "$T/out.json" 'j["stop_reason"] == "stop_sequence" and j["stop_sequence"] == k["stop"] and j["content"][0]["text"] == k["prefix"]' \
  "stop sequence" "$T/stop.json"

# Tool use history: tool_use -> tool_result -> answer; the result reaches the prompt (count_tokens grows).
TOOLS='[{"name":"get_weather","description":"Current weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}]'
HIST='{"model":"dsv4-tiny","max_tokens":5,"tools":'"$TOOLS"',"messages":[{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"sunny, 21 C"}]}]}'
expect_status 200 "$(post /v1/messages "$HIST")" "tool history"
jcheck "$T/out.json" 'j["type"] == "message" and j["usage"]["output_tokens"] == 5' "answer after tool_result"
post /v1/messages/count_tokens "$HIST" >/dev/null && N1=$(jget "$T/out.json" 'j["input_tokens"]')
post /v1/messages/count_tokens "${HIST/sunny, 21 C/sunny, 21 C, light wind from the west, humidity 40 percent}" >/dev/null && N2=$(jget "$T/out.json" 'j["input_tokens"]')
[ "$N2" -gt "$N1" ] || fail "tool_result content does not reach the prompt ($N1 vs $N2)"

# Errors in Anthropic's shape.
anth_error() {  # anth_error STATUS TYPE BODY what
  expect_status "$1" "$(post /v1/messages "$3")" "$4"
  jcheck "$T/out.json" 'j["type"] == "error" and j["error"]["type"] == "'"$2"'" and len(j["error"]["message"]) > 0' "$4 (shape)"
}
anth_error 400 invalid_request_error '{"model":"dsv4-tiny","messages":[{"role":"user","content":"x"}]}' "missing max_tokens"
anth_error 404 not_found_error '{"model":"gpt-4","max_tokens":5,"messages":[{"role":"user","content":"x"}]}' "unknown model"
anth_error 400 invalid_request_error '{"model":"dsv4-tiny","max_tokens":5,' "malformed JSON"
anth_error 400 invalid_request_error '{"model":"dsv4-tiny","max_tokens":5,"temperature":1.5,"messages":[{"role":"user","content":"x"}]}' "temperature > 1"
anth_error 400 invalid_request_error '{"model":"dsv4-tiny","max_tokens":"5","messages":[{"role":"user","content":"x"}]}' "max_tokens type"
anth_error 400 invalid_request_error '{"model":"dsv4-tiny","max_tokens":5,"messages":[{"role":"robot","content":"x"}]}' "bad role"
echo "anthropic_api: all checks passed"
