#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# deploy.image: builds the CPU image from deploy/Dockerfile on a Debian base made here (debootstrap + docker
# import: CI reaches no registry), runs it as the Compose file would (host network, read-only root), and serves
# a chat request with the demo model. Also checks: non-root user, HEALTHCHECK turns healthy, no compiler in the
# runtime stage. Removes the containers and images it made.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/docker_lib.sh"
need curl curl
need python3 python3
[ -f "$SRC/assets/tokenizer/tokenizer.json" ] || fail "assets/tokenizer/tokenizer.json missing: run scripts/fetch_tokenizer.sh"
docker_up
on_exit docker_down
tag=$$-$(date +%s)
base=dsv4-test-base:bookworm
img=dsv4-test:cpu-$tag
ctr=dsv4-test-$tag
t0=$(date +%s)
base_image "$base"
t1=$(date +%s)
echo "image: base ready in $((t1 - t0)) s; building $img (CPU, dsv4 target only)"
# The image, then the build stage's layers it leaves dangling (DSV4_DOCKER_KEEP_CACHE=1 keeps those, for re-runs).
on_exit "docker rmi -f $img >/dev/null; [ \"\${DSV4_DOCKER_KEEP_CACHE:-0}\" = 1 ] || docker image prune -f >/dev/null"
# --network host: the build stage installs its compiler from the Debian mirror.
docker build --network host -f "$SRC/deploy/Dockerfile" -t "$img" --build-arg BUILD_BASE="$base" \
  --build-arg RUNTIME_BASE="$base" --build-arg DSV4_ENABLE_CUDA=OFF "$SRC" >"$T/build.log" 2>&1 ||
  { tail -40 "$T/build.log"; fail "docker build failed"; }
t2=$(date +%s)
echo "image: built in $((t2 - t1)) s, $(docker image inspect -f '{{.Size}}' "$img" | awk '{printf "%.0f MB", $1 / 1e6}')"

# The runtime stage carries no toolchain.
if docker run --rm --entrypoint /bin/sh "$img" -c 'command -v g++ || command -v cc || command -v cmake'; then
  fail "the runtime stage contains a compiler"
fi
[ "$(docker run --rm --entrypoint /usr/bin/id "$img" -u)" = 10001 ] || fail "the image does not run as uid 10001"

port=$(free_port)
on_exit "docker rm -f $ctr >/dev/null 2>&1"
docker run -d --name "$ctr" --network host --read-only --tmpfs /tmp -e PORT="$port" -e SERVED_MODEL_NAME=dsv4-demo \
  -e API_KEY=test-key "$img" >/dev/null
ok=0
for _ in $(seq 1 240); do
  if curl -sf --max-time 2 "http://127.0.0.1:$port/health" >/dev/null; then ok=1; break; fi
  [ "$(docker inspect -f '{{.State.Running}}' "$ctr")" = true ] || break
  sleep 0.5
done
[ "$ok" = 1 ] || { docker logs "$ctr" 2>&1 | tail -30; fail "the container did not serve /health"; }
# The key came through the environment (DSV4_API_KEY), not argv: unauthenticated requests are refused.
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/models")
[ "$code" = 401 ] || fail "/v1/models without the API key gave HTTP $code (expected 401)"
docker exec "$ctr" sh -c 'tr "\0" " " </proc/1/cmdline' | grep -q test-key && fail "the API key is on the command line"
code=$(curl -s --max-time 120 -o "$T/chat.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  -H 'Authorization: Bearer test-key' "http://127.0.0.1:$port/v1/chat/completions" \
  -d '{"model": "dsv4-demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}')
[ "$code" = 200 ] || { cat "$T/chat.json"; docker logs "$ctr" 2>&1 | tail -20; fail "chat request: HTTP $code"; }
python3 - "$T/chat.json" <<'PY' || fail "chat response: $(head -c 400 "$T/chat.json")"
import json, sys
j = json.load(open(sys.argv[1]))
c = j["choices"][0]
assert j["model"] == "dsv4-demo" and c["message"]["role"] == "assistant", j
assert j["usage"]["completion_tokens"] >= 1 and c["finish_reason"] in ("stop", "length"), j
PY
# HEALTHCHECK (interval 15 s) reports healthy.
health=""
for _ in $(seq 1 60); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$ctr")
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || fail "HEALTHCHECK status: $health"
echo "image: chat OK from the container; healthy"
docker rm -f "$ctr" >/dev/null

# scripts/start-dsv4.sh / stop-dsv4.sh in container mode on this one node (the CPU Compose variant; the GPU file
# needs an NVIDIA runtime and /dev/infiniband), with the demo model mounted read-only as MODEL_DIR.
need docker-compose docker-compose
model=${DSV4_BINARY_DIR:?}/tiny-model
[ -f "$model/config.json" ] || fail "$model missing: scripts/setup.sh makes it"
cp "$SRC/deploy/.env.example" "$T/dsv4.env"
python3 - "$T/dsv4.env" "DSV4_IMAGE=$img" "MODEL_DIR=$model" "PORT=$port" "STATE_DIR=$T/state" <<'PY'
import re, sys
path, kvs = sys.argv[1], sys.argv[2:]
kvs += ["DSV4_MODE=container", "DSV4_COMPOSE_FILE=deploy/docker-compose.cpu.yml", "DEVICE=cpu", "NNODES=1",
        "TENSOR_PARALLEL_SIZE=1", "WORKER_SSH=", "SERVED_MODEL_NAME=dsv4-demo", "API_KEY=k2", "START_TIMEOUT=120"]
text = open(path).read()
for kv in kvs:
    key = kv.split("=", 1)[0]
    assert re.search(rf"^{key}=", text, re.M), key
    text = re.sub(rf"^{key}=.*$", lambda m: kv, text, flags=re.M)
open(path, "w").write(text)
PY
on_exit "bash $SRC/scripts/stop-dsv4.sh --env $T/dsv4.env >/dev/null 2>&1"
bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" || fail "start-dsv4.sh (container mode) failed"
code=$(curl -s --max-time 120 -o "$T/chat2.json" -w '%{http_code}' -H 'Content-Type: application/json' \
  -H 'Authorization: Bearer k2' "http://127.0.0.1:$port/v1/chat/completions" \
  -d '{"model": "dsv4-demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}')
[ "$code" = 200 ] || fail "chat through the Compose-started container: HTTP $code $(head -c 300 "$T/chat2.json")"
bash "$SRC/scripts/stop-dsv4.sh" --env "$T/dsv4.env" || fail "stop-dsv4.sh (container mode) failed"
[ -z "$(docker ps -aq --filter name=dsv4-rank0)" ] || fail "the container is still there after stop-dsv4.sh"
echo "image: start/stop in container mode OK; total $(($(date +%s) - t0)) s"
