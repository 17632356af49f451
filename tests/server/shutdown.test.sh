#!/usr/bin/env bash
# SIGTERM through the real binary and engine (issue 9, item 4): streams still running when the grace period
# ends get a final event (OpenAI finish_reason "abort" + [DONE], Anthropic an error event), and the process
# exits soon after.
source "$(dirname "$0")/lib.sh"
start_server drain --shutdown-grace-period 1
curl -sN --max-time 60 -H 'Content-Type: application/json' "$URL/v1/chat/completions" \
  -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":4000,"ignore_eos":true,"stream":true}' >"$T/oai.txt" &
C1=$!
curl -sN --max-time 60 -H 'Content-Type: application/json' "$URL/v1/messages" \
  -d '{"model":"dsv4-tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4000,"stream":true}' >"$T/anth.txt" &
C2=$!
for _ in $(seq 1 200); do
  [ "$(grep -c '^data: ' "$T/oai.txt" || true)" -ge 3 ] && [ "$(grep -c '^data: ' "$T/anth.txt" || true)" -ge 3 ] && break
  sleep 0.05
done
t0=$(date +%s.%N)
kill -TERM "$PID"
for _ in $(seq 1 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null && fail "the server did not exit within 15 s of SIGTERM"
wait "$C1" "$C2" || true
took=$(python3 -c "import time; print('%.2f' % (time.time() - $t0))")
grep -q '"finish_reason":"abort"' "$T/oai.txt" || fail "no finish_reason abort: $(tail -c 300 "$T/oai.txt")"
[ "$(tail -n 2 "$T/oai.txt" | head -n 1)" = "data: [DONE]" ] || fail "the OpenAI stream does not end with [DONE]"
grep -q '^event: error' "$T/anth.txt" || fail "no Anthropic error event: $(tail -c 300 "$T/anth.txt")"
grep -q 'message_stop' "$T/anth.txt" && fail "a cut Anthropic stream ends with message_stop"
echo "shutdown: streams ended with their final events; exit $took s after SIGTERM"
