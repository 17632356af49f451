#!/usr/bin/env bash
# The OpenAI-compatible API over HTTP with curl, on the embedded demo model (no --model): chat (plain,
# streaming, reasoning on/off, logprobs, n, stop strings, tool-call round trip), completions, tokenize,
# usage with cached tokens, models, metrics (promtool). Asserts on content, not only status codes.
source "$(dirname "$0")/lib.sh"
start_server demo --block-size 128

# Models: the demo's default name and length limit.
curl -sf "$URL/v1/models" >"$T/out.json" || fail "GET /v1/models"
jcheck "$T/out.json" 'j["object"] == "list" and j["data"][0]["id"] == "dsv4-tiny" and j["data"][0]["max_model_len"] == 65536' "models"

CHAT='{"model":"dsv4-tiny","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Name three colors."}],"max_tokens":6,"temperature":0}'
expect_status 200 "$(post /v1/chat/completions "$CHAT")" "chat"
cp "$T/out.json" "$T/chat.json"
jcheck "$T/chat.json" 'j["object"] == "chat.completion" and j["id"].startswith("chatcmpl-") and j["model"] == "dsv4-tiny"' "chat envelope"
jcheck "$T/chat.json" 'len(j["choices"]) == 1 and j["choices"][0]["message"]["role"] == "assistant"' "chat choice"
jcheck "$T/chat.json" 'isinstance(j["choices"][0]["message"]["content"], str) and len(j["choices"][0]["message"]["content"]) > 0' "chat content"
jcheck "$T/chat.json" 'j["choices"][0]["message"]["reasoning_content"] is None' "no reasoning without thinking"
jcheck "$T/chat.json" 'j["choices"][0]["finish_reason"] == "length" and j["usage"]["completion_tokens"] == 6' "max_tokens reached"
jcheck "$T/chat.json" 'j["usage"]["total_tokens"] == j["usage"]["prompt_tokens"] + 6' "usage total"
# The prompt token count equals /tokenize of the same messages.
expect_status 200 "$(post /tokenize "$CHAT")" "tokenize messages"
[ "$(jget "$T/out.json" 'j["count"]')" = "$(jget "$T/chat.json" 'j["usage"]["prompt_tokens"]')" ] || fail "usage.prompt_tokens != /tokenize count"

# Greedy is deterministic; a seed makes sampling reproducible.
post /v1/chat/completions "$CHAT" >/dev/null
jcheck "$T/out.json" 'j["choices"][0]["message"]["content"] == k["choices"][0]["message"]["content"]' "greedy output differs between runs" "$T/chat.json"
SEEDED='{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8,"temperature":1.0,"seed":1234}'
post /v1/chat/completions "$SEEDED" >/dev/null && cp "$T/out.json" "$T/seeded.json"
post /v1/chat/completions "$SEEDED" >/dev/null
jcheck "$T/out.json" 'j["choices"][0]["message"]["content"] == k["choices"][0]["message"]["content"]' "seeded sampling is not reproducible" "$T/seeded.json"

# Streaming: role first, content deltas that add up to the non-streamed text, finish, usage, [DONE].
STREAM=${CHAT%\}}',"stream":true,"stream_options":{"include_usage":true}}'
curl -sN --max-time 60 -H 'Content-Type: application/json' -d "$STREAM" "$URL/v1/chat/completions" >"$T/stream.txt"
[ "$(tail -n 2 "$T/stream.txt")" = "data: [DONE]" ] || fail "stream does not end with [DONE]"
sse_json "$T/stream.txt" >"$T/chunks.json"
jcheck "$T/chunks.json" 'j[0]["choices"][0]["delta"]["role"] == "assistant" and all(c["object"] == "chat.completion.chunk" for c in j)' "first chunk"
jcheck "$T/chunks.json" '"".join(c["choices"][0]["delta"].get("content", "") for c in j if c["choices"]) == k["choices"][0]["message"]["content"]' \
  "streamed content == non-streamed" "$T/chat.json"
jcheck "$T/chunks.json" '[c["choices"][0]["finish_reason"] for c in j if c["choices"] and c["choices"][0]["finish_reason"]] == ["length"]' "one finish chunk"
jcheck "$T/chunks.json" 'j[-1]["choices"] == [] and j[-1]["usage"]["completion_tokens"] == 6 and all("usage" in c for c in j)' "usage chunk"

# Reasoning on: the output is reasoning (the prompt ends in <think>); off: no reasoning at all.
THINK='{"messages":[{"role":"user","content":"Why is the sky blue?"}],"max_tokens":8,"temperature":0,"chat_template_kwargs":{"thinking":true}}'
expect_status 200 "$(post /v1/chat/completions "$THINK")" "thinking chat"
jcheck "$T/out.json" 'isinstance(j["choices"][0]["message"]["reasoning_content"], str) and len(j["choices"][0]["message"]["reasoning_content"]) > 0' "reasoning_content present"
cp "$T/out.json" "$T/think.json"
curl -sN --max-time 60 -H 'Content-Type: application/json' -d "${THINK%\}},\"stream\":true}" "$URL/v1/chat/completions" >"$T/rstream.txt"
sse_json "$T/rstream.txt" >"$T/rchunks.json"
jcheck "$T/rchunks.json" '"".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in j) == k["choices"][0]["message"]["reasoning_content"]' \
  "streamed reasoning_content deltas" "$T/think.json"
NOTHINK=${THINK/\"thinking\":true/\"thinking\":false}
expect_status 200 "$(post /v1/chat/completions "$NOTHINK")" "thinking off"
jcheck "$T/out.json" 'j["choices"][0]["message"]["reasoning_content"] is None and len(j["choices"][0]["message"]["content"]) > 0' "no reasoning when off"

# Logprobs: one entry per token, top-3 alternatives, bytes that add up to the content.
LP='{"messages":[{"role":"user","content":"Hello"}],"max_tokens":5,"temperature":0,"logprobs":true,"top_logprobs":3}'
expect_status 200 "$(post /v1/chat/completions "$LP")" "logprobs"
jcheck "$T/out.json" 'len(j["choices"][0]["logprobs"]["content"]) == 5 and all(len(e["top_logprobs"]) == 3 and e["logprob"] <= 0 for e in j["choices"][0]["logprobs"]["content"])' "logprobs shape"
jcheck "$T/out.json" 'bytes(b for e in j["choices"][0]["logprobs"]["content"] for b in e["bytes"]).decode("utf-8", "replace") == j["choices"][0]["message"]["content"]' "logprob bytes == content"
jcheck "$T/out.json" 'all(e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-6 for e in j["choices"][0]["logprobs"]["content"])' "greedy token is the top one"

# n = 2: two choices, completion tokens summed.
expect_status 200 "$(post /v1/chat/completions '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"n":2,"seed":5}')" "n=2"
jcheck "$T/out.json" '[c["index"] for c in j["choices"]] == [0, 1] and j["usage"]["completion_tokens"] == 8' "n=2 choices"

# Stop strings: cut the greedy text at a piece of its own middle.
LONG='{"messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":16,"temperature":0}'
post /v1/chat/completions "$LONG" >/dev/null
stop_case "$T/out.json" 'j["choices"][0]["message"]["content"]' "$LONG" stop >"$T/stop.json"
expect_status 200 "$(post /v1/chat/completions "$(jget "$T/stop.json" 'j["request"]')")" "stop string"
jcheck "$T/out.json" 'j["choices"][0]["message"]["content"] == k["prefix"]' "content cut before the stop string" "$T/stop.json"
jcheck "$T/out.json" 'j["choices"][0]["finish_reason"] == "stop" and j["choices"][0]["stop_reason"] == k["stop"]' "stop reason" "$T/stop.json"

# Tool calls round trip, request side: tools offered, then assistant tool_calls -> tool result -> answer.
TOOLS='[{"type":"function","function":{"name":"get_weather","description":"Current weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]'
expect_status 200 "$(post /v1/chat/completions '{"messages":[{"role":"user","content":"Weather in Paris?"}],"tools":'"$TOOLS"',"tool_choice":"auto","max_tokens":4}')" "chat with tools"
jcheck "$T/out.json" 'j["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")' "tools finish"
ROUND='{"messages":[{"role":"user","content":"Weather in Paris?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_abc","content":"sunny, 21 C"}],"tools":'"$TOOLS"',"max_tokens":5,"temperature":0}'
expect_status 200 "$(post /v1/chat/completions "$ROUND")" "tool round trip"
jcheck "$T/out.json" 'isinstance(j["choices"][0]["message"]["content"], str) and j["usage"]["completion_tokens"] == 5' "answer after tool result"
# ...and the model saw the call and the result: the rendered prompt, read back through /tokenize + /detokenize.
expect_status 200 "$(post /tokenize "$ROUND")" "tokenize round trip"
python3 -c 'import json,sys; print(json.dumps({"tokens": json.load(open(sys.argv[1]))["tokens"]}))' "$T/out.json" >"$T/ids.json"
expect_status 200 "$(post /detokenize "$(cat "$T/ids.json")")" "detokenize"
jcheck "$T/out.json" '"<｜DSML｜invoke name=\"get_weather\">" in j["prompt"] and "<tool_result>sunny, 21 C</tool_result>" in j["prompt"] and j["prompt"].endswith("<｜Assistant｜></think>")' "prompt holds the tool call and its result"

# Completions: text, echo, token-id prompts, several prompts, logprobs.
expect_status 200 "$(post /v1/completions '{"model":"dsv4-tiny","prompt":"Once upon a time","max_tokens":5,"temperature":0}')" "completions"
jcheck "$T/out.json" 'j["object"] == "text_completion" and len(j["choices"][0]["text"]) > 0 and j["choices"][0]["finish_reason"] == "length" and j["usage"]["completion_tokens"] == 5' "completion"
cp "$T/out.json" "$T/completion.json"
expect_status 200 "$(post /v1/completions '{"prompt":"Once upon a time","max_tokens":5,"temperature":0,"echo":true}')" "echo"
jcheck "$T/out.json" 'j["choices"][0]["text"] == "Once upon a time" + k["choices"][0]["text"]' "echo prepends the prompt" "$T/completion.json"
expect_status 200 "$(post /tokenize '{"prompt":"Once upon a time"}')" "tokenize prompt"
IDS=$(jget "$T/out.json" 'j["tokens"]')
expect_status 200 "$(post /v1/completions '{"prompt":'"$IDS"',"max_tokens":5,"temperature":0}')" "token-id prompt"
jcheck "$T/out.json" 'j["choices"][0]["text"] == k["choices"][0]["text"]' "token ids give the same completion" "$T/completion.json"
expect_status 200 "$(post /v1/completions '{"prompt":["a","b"],"n":2,"max_tokens":2,"logprobs":2}')" "two prompts x n=2"
jcheck "$T/out.json" 'len(j["choices"]) == 4 and all(len(c["logprobs"]["tokens"]) == 2 and len(c["logprobs"]["top_logprobs"][0]) == 2 for c in j["choices"])' "4 choices with logprobs"
curl -sN --max-time 60 -H 'Content-Type: application/json' -d '{"prompt":"Once upon a time","max_tokens":5,"temperature":0,"stream":true}' "$URL/v1/completions" >"$T/cstream.txt"
sse_json "$T/cstream.txt" >"$T/cchunks.json"
jcheck "$T/cchunks.json" '"".join(c["choices"][0]["text"] for c in j) == k["choices"][0]["text"]' "streamed completion" "$T/completion.json"

# Tokenize / detokenize round trip.
expect_status 200 "$(post /tokenize '{"prompt":"Hello, wörld! 你好","return_token_strs":true}')" "tokenize"
jcheck "$T/out.json" 'j["count"] == len(j["tokens"]) == len(j["token_strs"]) and j["max_model_len"] == 65536' "tokenize shape"
python3 -c 'import json,sys; print(json.dumps({"tokens": json.load(open(sys.argv[1]))["tokens"]}))' "$T/out.json" >"$T/ids.json"
expect_status 200 "$(post /detokenize "$(cat "$T/ids.json")")" "detokenize"
jcheck "$T/out.json" 'j["prompt"] == "Hello, wörld! 你好"' "round trip"

# Prefix caching (block size 128): the second identical long prompt reuses cached blocks.
PREF=$(python3 -c 'import json; print(json.dumps({"messages":[{"role":"user","content":" ".join(["word%d" % i for i in range(150)])}],"max_tokens":2}))')
post /v1/chat/completions "$PREF" >/dev/null
expect_status 200 "$(post /v1/chat/completions "$PREF")" "prefix cache"
jcheck "$T/out.json" 'j["usage"]["prompt_tokens"] > 256 and j["usage"]["prompt_tokens_details"]["cached_tokens"] >= 128' "cached tokens reported"

# Metrics: valid exposition format, and they counted what happened above.
curl -sf "$URL/metrics" >"$T/metrics.txt" || fail "GET /metrics"
promtool check metrics <"$T/metrics.txt" || fail "promtool check metrics: $(promtool check metrics <"$T/metrics.txt" 2>&1)"
grep -q '^dsv4_http_requests_total{method="POST",endpoint="/v1/chat/completions",status="200"} [1-9]' "$T/metrics.txt" || fail "request counter"
grep -q '^dsv4_time_to_first_token_seconds_count [1-9]' "$T/metrics.txt" || fail "TTFT histogram"
grep -q '^dsv4_prefix_cache_hits_total [1-9]' "$T/metrics.txt" || fail "prefix cache hits"
grep -q '^dsv4_generation_tokens_total [1-9]' "$T/metrics.txt" || fail "generation tokens"
echo "openai_api: all checks passed"
