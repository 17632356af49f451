#!/usr/bin/env bash
# A served TP=2 pair (rank 0 serves HTTP, its rank-1 child computes with it) on the demo model: chat works;
# killing the worker mid-stream gives the client an error event within the bound, /health turns unhealthy
# and the server exits non-zero; a worker node with another checkpoint is refused, naming the mismatch.
# shellcheck source=../server/lib.sh
source "$(dirname "$0")/../server/lib.sh"
# A port nobody listens on now (the kernel's pick).
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

start_server tp --device cpu --numerics exact --tensor-parallel-size 2 --master-port "$(free_port)" --distributed-timeout 6
grep -q "started rank 1" "$T/tp.log" || fail "rank 1 was not started"
code=$(post /v1/chat/completions '{"model":"dsv4-tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0}')
[ "$code" = 200 ] || fail "chat through the TP=2 pair: HTTP $code"
jcheck "$T/out.json" 'j["usage"]["completion_tokens"] == 8 and j["choices"][0]["finish_reason"] == "length"' "8 tokens"
# The same request on one rank gives the same tokens (greedy): compare the texts.
cp "$T/out.json" "$T/tp2.json"
start_server one --device cpu --numerics exact
code=$(post /v1/chat/completions '{"model":"dsv4-tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0}')
[ "$code" = 200 ] || fail "chat on one rank: HTTP $code"
jcheck "$T/out.json" 'j["choices"][0]["message"]["content"] == k["choices"][0]["message"]["content"]' "TP=2 text = TP=1 text" "$T/tp2.json"
kill "$PID"; wait "$PID" 2>/dev/null || true

# Kill the worker while a stream runs.
start_server tp2 --device cpu --tensor-parallel-size 2 --master-port "$(free_port)" --distributed-timeout 6
HEAD=$PID
WORKER=$(pgrep -P "$HEAD" -f rank-worker) || fail "no rank-worker child"
curl -sN --max-time 120 -H 'Content-Type: application/json' \
  -d '{"model":"dsv4-tiny","messages":[{"role":"user","content":"go"}],"max_tokens":4000,"ignore_eos":true,"stream":true}' \
  "$URL/v1/chat/completions" >"$T/stream.txt" &
CURL=$!
for _ in $(seq 1 200); do grep -q '"content"' "$T/stream.txt" 2>/dev/null && break; sleep 0.05; done
grep -q '"content"' "$T/stream.txt" || fail "the stream produced no tokens"
t0=$(date +%s)
kill -9 "$WORKER"
wait "$CURL" || true
t1=$(date +%s)
grep -q 'generation failed: tensor-parallel group failed' "$T/stream.txt" || fail "no error event: $(tail -c 400 "$T/stream.txt")"
[ $((t1 - t0)) -le 15 ] || fail "the error took $((t1 - t0)) s (bound: 6 s timeout)"
hc=$(curl -s -o "$T/health.json" -w '%{http_code}' --max-time 5 "$URL/health" || true)
[ "$hc" = 503 ] || fail "/health after the failure: $hc"
jcheck "$T/health.json" 'j["status"] == "unhealthy" and "tensor-parallel" in j["error"]' "health says why"
for _ in $(seq 1 200); do kill -0 "$HEAD" 2>/dev/null || break; sleep 0.1; done
kill -0 "$HEAD" 2>/dev/null && fail "the head still runs 20 s after its worker died"
set +e; wait "$HEAD"; rc=$?; set -e
[ "$rc" -ne 0 ] || fail "the head exited 0 after its worker died"
grep -q "stopped: tensor-parallel group failed" "$T/tp2.log" || fail "the head's log does not say why it stopped"

# A hung worker (stopped, its sockets open) is detected by the timeout, not only a dead one.
start_server tp3 --device cpu --tensor-parallel-size 2 --master-port "$(free_port)" --distributed-timeout 4
HEAD=$PID
WORKER=$(pgrep -P "$HEAD" -f rank-worker) || fail "no rank-worker child"
kill -STOP "$WORKER"
t0=$(date +%s)
code=$(post /v1/chat/completions '{"model":"dsv4-tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4}')
t1=$(date +%s)
kill -CONT "$WORKER" 2>/dev/null || true
[ "$code" = 500 ] || fail "a request to a pair with a hung worker: HTTP $code"
grep -q "tensor-parallel group failed" "$T/out.json" || fail "the error does not say why: $(cat "$T/out.json")"
[ $((t1 - t0)) -le 12 ] || fail "the hung worker took $((t1 - t0)) s to detect (timeout 4 s)"
for _ in $(seq 1 200); do kill -0 "$HEAD" 2>/dev/null || break; sleep 0.1; done
kill -0 "$HEAD" 2>/dev/null && fail "the head still runs after its worker hung"

# A worker node serving another checkpoint is refused on both nodes, naming what differs.
P=$(free_port)
"$BIN" serve --device cpu --host 127.0.0.1 --port 0 --tensor-parallel-size 2 --nnodes 2 --node-rank 0 \
  --master-port $P --rendezvous-timeout 60 >"$T/head.log" 2>&1 &
H=$!
SERVER_PIDS+=("$H")
"$BIN" serve --device cpu --model "$DSV4_SHARED_DIR/fixtures/tiny-a" --tensor-parallel-size 2 --nnodes 2 \
  --node-rank 1 --headless --master-port $P --rendezvous-timeout 60 >"$T/worker.log" 2>&1 &
W=$!
SERVER_PIDS+=("$W")
set +e; wait "$W"; wrc=$?; wait "$H"; hrc=$?; set -e
if [ "$wrc" -eq 0 ] || [ "$hrc" -eq 0 ]; then fail "mismatched nodes: exit codes head $hrc worker $wrc"; fi
grep -q "rank 1 has a different config.json" "$T/head.log" || fail "head log does not name the mismatch"
grep -q "rank 1 has a different config.json" "$T/worker.log" || fail "worker log does not name the mismatch"
# Headless on node 0 is a usage error.
if "$BIN" serve --device cpu --tensor-parallel-size 2 --nnodes 2 --node-rank 0 --headless >"$T/bad.log" 2>&1; then
  fail "--headless on node 0 was accepted"
fi
grep -q "headless is for worker nodes" "$T/bad.log" || fail "no message for --headless on node 0"
echo "PASS tp_serve"
