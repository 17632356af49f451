#!/usr/bin/env bash
# Bad input and misuse, each answered in the OpenAI error shape with the right status: API key, malformed
# JSON, wrong types, unknown model, prompt over --max-model-len, invalid sampling values, oversize bodies,
# unknown routes. Then a client that disconnects mid-stream: its request is aborted and its KV blocks return.
source "$(dirname "$0")/lib.sh"
start_server guarded --api-key 's3cret-key' --max-model-len 512 --max-request-body-bytes 64KiB --no-enable-prefix-caching
AUTH=(-H 'Authorization: Bearer s3cret-key')

oai_error() {  # oai_error STATUS BODY what [param]
  expect_status "$1" "$(post /v1/chat/completions "$2" "${AUTH[@]}")" "$3"
  jcheck "$T/out.json" 'set(j["error"]) == {"message", "type", "param", "code"} and len(j["error"]["message"]) > 0' "$3 (shape)"
  if [ -n "${4:-}" ]; then jcheck "$T/out.json" 'j["error"]["param"] == "'"$4"'"' "$3 (param)"; fi
}
OK='{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}'

# API key: missing, wrong (same length and not), right as Bearer, right as x-api-key; /health is open.
expect_status 401 "$(post /v1/chat/completions "$OK")" "missing key"
jcheck "$T/out.json" 'j["error"]["type"] == "authentication_error" and j["error"]["code"] == "invalid_api_key"' "401 shape"
expect_status 401 "$(post /v1/chat/completions "$OK" -H 'Authorization: Bearer s3cret-kez')" "wrong key"
expect_status 401 "$(post /v1/chat/completions "$OK" -H 'Authorization: Bearer s3')" "short key"
expect_status 401 "$(post /v1/messages '{"model":"x"}' -H 'x-api-key: nope')" "wrong key, Anthropic"
jcheck "$T/out.json" 'j["type"] == "error" and j["error"]["type"] == "authentication_error"' "401 Anthropic shape"
expect_status 200 "$(post /v1/chat/completions "$OK" "${AUTH[@]}")" "Bearer key"
expect_status 200 "$(post /v1/chat/completions "$OK" -H 'x-api-key: s3cret-key')" "x-api-key"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] || fail "/health needs no key"

# Malformed JSON and wrong types.
oai_error 400 '{"messages": [' "truncated JSON"
jcheck "$T/out.json" '"malformed JSON" in j["error"]["message"]' "malformed JSON message"
oai_error 400 '[1, 2]' "body not an object"
oai_error 400 '{"messages":"hi"}' "messages not an array" messages
oai_error 400 '{"messages":[]}' "empty messages" messages
oai_error 400 '{"messages":[{"role":"wizard","content":"x"}]}' "unknown role" "messages[0]"
oai_error 400 '{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}' "temperature type" temperature
oai_error 400 '{"messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}' "max_tokens type" max_tokens
oai_error 400 '{"messages":[{"role":"user","content":"x"}],"stream":"yes"}' "stream type" stream
oai_error 400 '{"messages":[{"role":"user","content":"x"}],"stop":[1,2]}' "stop type" stop
oai_error 400 '{"messages":[{"role":"user","content":"x"}],"tools":{"a":1}}' "tools type" tools
expect_status 400 "$(post /v1/completions '{"prompt":{"text":"x"}}' "${AUTH[@]}")" "completions prompt type"

# Unknown model.
oai_error 404 '{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}' "unknown model" model
jcheck "$T/out.json" 'j["error"]["code"] == "model_not_found" and "gpt-4o" in j["error"]["message"]' "model_not_found"

# Prompt over --max-model-len (512).
BIG=$(python3 -c 'import json; print(json.dumps({"messages":[{"role":"user","content":" ".join(["token%d" % i for i in range(400)])}]}))')
oai_error 400 "$BIG" "prompt over max-model-len"
jcheck "$T/out.json" 'j["error"]["code"] == "context_length_exceeded" and "512" in j["error"]["message"]' "context length message"
expect_status 400 "$(post /v1/completions "$(python3 -c 'import json; print(json.dumps({"prompt":list(range(600))}))')" "${AUTH[@]}")" "completions prompt over max-model-len"

# Invalid sampling values.
for bad in '"temperature":-0.5' '"top_p":0' '"top_p":1.5' '"min_p":2' '"presence_penalty":3' '"frequency_penalty":-2.5' \
           '"repetition_penalty":0' '"max_tokens":0' '"n":0' '"top_logprobs":3' '"logprobs":true,"top_logprobs":25' \
           '"top_k":-5' '"stop_token_ids":[999999999]'; do
  oai_error 400 '{"messages":[{"role":"user","content":"x"}],'"$bad"'}' "invalid $bad"
done
expect_status 400 "$(post /v1/completions '{"prompt":"x","logprobs":21}' "${AUTH[@]}")" "completions logprobs > 20"

# Oversize bodies (limit 64 KiB): 413 in both shapes.
python3 -c 'import json; print(json.dumps({"model":"dsv4-tiny","max_tokens":5,"messages":[{"role":"user","content":"x"*100000}]}))' >"$T/huge.json"
code=$(curl -s --max-time 30 -o "$T/out.json" -w '%{http_code}' "${AUTH[@]}" -H 'Content-Type: application/json' --data-binary @"$T/huge.json" "$URL/v1/chat/completions")
expect_status 413 "$code" "oversize body"
jcheck "$T/out.json" 'j["error"]["type"] == "invalid_request_error" and "size limit" in j["error"]["message"]' "413 OpenAI shape"
code=$(curl -s --max-time 30 -o "$T/out.json" -w '%{http_code}' "${AUTH[@]}" -H 'Content-Type: application/json' --data-binary @"$T/huge.json" "$URL/v1/messages")
expect_status 413 "$code" "oversize body, Anthropic"
jcheck "$T/out.json" 'j["type"] == "error" and j["error"]["type"] == "request_too_large"' "413 Anthropic shape"

# Unknown route.
expect_status 404 "$(post /v1/embeddings '{"input":"x"}' "${AUTH[@]}")" "unknown route"
jcheck "$T/out.json" 'j["error"]["type"] == "not_found_error"' "404 shape"

# Disconnect mid-stream: KV blocks in use while streaming, back to zero (and the request aborted) right after.
metric() { curl -s "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
LONGREQ='{"messages":[{"role":"user","content":"Write forever."}],"max_tokens":480,"ignore_eos":true,"stream":true}'
curl -sN --max-time 60 "${AUTH[@]}" -H 'Content-Type: application/json' -d "$LONGREQ" "$URL/v1/chat/completions" >"$T/long.txt" &
CURL=$!
for _ in $(seq 1 300); do [ "$(grep -c '^data: ' "$T/long.txt" || true)" -ge 5 ] && break; sleep 0.05; done
[ "$(grep -c '^data: ' "$T/long.txt")" -ge 5 ] || fail "the long stream did not start"
[ "$(metric dsv4_num_requests_running)" = 1 ] || fail "expected 1 running request"
used=$(metric dsv4_kv_cache_blocks_used)
[ "${used%.*}" -ge 1 ] || fail "no KV blocks in use while streaming ($used)"
kill "$CURL"; wait "$CURL" 2>/dev/null || true
t0=$(date +%s.%N)
for _ in $(seq 1 100); do
  [ "$(metric dsv4_num_requests_running)" = 0 ] && [ "$(metric dsv4_kv_cache_blocks_used)" = 0 ] && break
  sleep 0.05
done
[ "$(metric dsv4_kv_cache_blocks_used)" = 0 ] || fail "KV blocks not returned after the client left"
[ "$(metric dsv4_num_requests_running)" = 0 ] || fail "request still running after the client left"
echo "disconnect: KV freed $(python3 -c "import time; print('%.2f' % (time.time() - $t0))") s after the client left"
[ "$(metric 'dsv4_requests_finished_total{finished_reason="abort"}')" = 1 ] || fail "abort not counted"
grep -q '"finish_reason":"length"' "$T/long.txt" && fail "the stream ran to the end instead of being aborted"

# The same for a non-streaming request whose client gives up (the server answers 499, for the log).
curl -s --max-time 1 "${AUTH[@]}" -H 'Content-Type: application/json' -d "${LONGREQ/\"stream\":true/\"stream\":false}" "$URL/v1/chat/completions" >/dev/null || true
for _ in $(seq 1 200); do [ "$(metric 'dsv4_requests_finished_total{finished_reason="abort"}')" = 2 ] && break; sleep 0.05; done
[ "$(metric 'dsv4_requests_finished_total{finished_reason="abort"}')" = 2 ] || fail "non-streaming request not aborted"
[ "$(metric dsv4_num_requests_running)" = 0 ] && [ "$(metric dsv4_kv_cache_blocks_used)" = 0 ] || fail "non-streaming request kept its KV"
for _ in $(seq 1 100); do grep -q '"POST /v1/chat/completions" 499' "$T/guarded.log" && break; sleep 0.05; done
grep -q '"POST /v1/chat/completions" 499' "$T/guarded.log" || fail "no 499 logged for the abandoned request"
echo "errors: all checks passed"
