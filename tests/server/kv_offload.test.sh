#!/usr/bin/env bash
# Issue 17 item 3 through the server on the demo model: a conversation's blocks persist in --kv-offload-dir;
# after a restart the next turn reports the disk hit in cached_tokens and /metrics, and its logprobs equal a
# cold server's exactly; corrupted block files give the same answer with a warning; a read-only directory
# serves normally with a warning.
source "$(dirname "$0")/lib.sh"
KV="$T/kv"
metric() { curl -s "$URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
stop_server() { kill -TERM "$PID"; wait "$PID" || true; }
TURN1=$(python3 -c "print(' '.join('word%d' % i for i in range(400)))")
TURN2="$TURN1 and then $(python3 -c "print(' '.join('next%d' % i for i in range(40)))")"
req() { printf '{"prompt":"%s","max_tokens":3,"temperature":0,"logprobs":5}' "$1"; }
FLAGS=(--kv-cache-memory 64MiB --max-model-len 8192)

start_server one "${FLAGS[@]}" --kv-offload-dir "$KV" --kv-offload-size 64MiB
grep -q "KV offload: $KV (read-write), size 64.0 MiB" "$T/one.log" || fail "startup does not print the disk tier"
expect_status 200 "$(post /v1/completions "$(req "$TURN1")")" "turn 1"
stop_server
files=$(find "$KV" -name '*.kvb' | wc -l)
[ "$files" -ge 2 ] || fail "turn 1 left $files block files"

start_server cold "${FLAGS[@]}" --no-enable-prefix-caching
expect_status 200 "$(post /v1/completions "$(req "$TURN2")")" "cold turn 2"
cp "$T/out.json" "$T/cold.json"
jcheck "$T/cold.json" 'len(j["choices"][0]["logprobs"]["token_logprobs"]) == 3 and len(j["choices"][0]["logprobs"]["top_logprobs"][0]) >= 4' \
  "the cold run has no logprobs to compare"
stop_server

start_server two "${FLAGS[@]}" --kv-offload-dir "$KV" --kv-offload-size 64MiB
expect_status 200 "$(post /v1/completions "$(req "$TURN2")")" "turn 2 after the restart"
cached=$(jget "$T/out.json" 'j["usage"]["prompt_tokens_details"]["cached_tokens"]')
[ "$cached" -ge 512 ] || fail "cached_tokens $cached after the restart (the disk hit is not reported)"
hits=$(metric dsv4_kv_offload_hit_tokens_total)
[ "${hits%.*}" = "$cached" ] || fail "dsv4_kv_offload_hit_tokens_total $hits, cached_tokens $cached"
read_bytes=$(metric dsv4_kv_offload_read_bytes_total)
[ "${read_bytes%.*}" -gt 0 ] || fail "no bytes read reported"
metric dsv4_kv_offload_restore_seconds_total | grep -q . || fail "no restore time reported"
jcheck "$T/out.json" 'j["choices"][0]["logprobs"] == k["choices"][0]["logprobs"] and j["choices"][0]["text"] == k["choices"][0]["text"]' \
  "turn 2 from disk differs from the cold run" "$T/cold.json"
stop_server

# Every block file corrupted (one byte flipped mid-file): recomputed, same answer, a warning.
for f in "$KV"/*.kvb; do
  python3 - "$f" <<'PY'
import os, sys
p = sys.argv[1]
with open(p, "r+b") as f:
    f.seek(os.path.getsize(p) // 2)
    b = f.read(1)
    f.seek(os.path.getsize(p) // 2)
    f.write(bytes([b[0] ^ 0x55]))
PY
done
start_server three "${FLAGS[@]}" --kv-offload-dir "$KV" --kv-offload-size 64MiB
expect_status 200 "$(post /v1/completions "$(req "$TURN2")")" "turn 2 over corrupted files"
jcheck "$T/out.json" 'j["choices"][0]["logprobs"] == k["choices"][0]["logprobs"]' "corrupted files changed the answer" "$T/cold.json"
grep -q "KV offload: ignoring .*checksum mismatch" "$T/three.log" || fail "no warning for a corrupted block file"
bad=$(metric dsv4_kv_offload_bad_files_total)
[ "${bad%.*}" -ge 1 ] || fail "dsv4_kv_offload_bad_files_total $bad"
stop_server

# A directory that takes no writes (root included): a warning, then normal service.
start_server ro "${FLAGS[@]}" --kv-offload-dir /proc/self --kv-offload-size 64MiB
grep -q "KV offload: /proc/self does not take writes" "$T/ro.log" || fail "no warning for a read-only directory"
expect_status 200 "$(post /v1/completions "$(req "$TURN2")")" "read-only directory"
jcheck "$T/out.json" 'j["choices"][0]["logprobs"] == k["choices"][0]["logprobs"]' "read-only directory changed the answer" "$T/cold.json"
[ "$(metric dsv4_kv_offload_writable)" = 0 ] || fail "dsv4_kv_offload_writable is not 0"
echo "kv_offload: restart restored $cached tokens from disk ($read_bytes bytes), answers equal a cold run"
