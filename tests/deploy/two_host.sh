#!/usr/bin/env bash
# deploy.native_single_node / deploy.two_host_preflight / deploy.two_host_tp2: scripts/start-dsv4.sh and
# stop-dsv4.sh in native mode between two "hosts" on this machine: network namespaces joined by a veth pair
# (the interface is called dsv4net0 on both sides, like a Spark's matching port names), a real sshd in the
# worker's namespace with a key generated here, and the head's scripts run in the head's namespace. The worker's
# sshd also gets a mount namespace in which $T/head-only is an empty tmpfs: a model there exists on the head only.
#   two_host.sh single     NNODES=1 in the head namespace: start, chat, stop
#   two_host.sh preflight  the model is missing on the worker: the actionable message, nothing started
#   two_host.sh tp2        head + worker, CPU backend, demo model, TP=2: start, chat through the head, stop
# Needs root (namespaces, sshd), which CI has; fails, never skips, without it.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
case=${1:?single|preflight|tp2}
BIN=${DSV4_BIN:?}
[ "$(id -u)" = 0 ] || fail "needs root for network namespaces and sshd (CI runs as root)"
need ip iproute2
need ssh openssh-client
need ssh-keygen openssh-client
need curl curl
need python3 python3
[ -x /usr/sbin/sshd ] || fail "/usr/sbin/sshd not found: install openssh-server (scripts/setup.sh does)"
[ -x "$BIN" ] || fail "$BIN not built"
model=${DSV4_BINARY_DIR:?}/tiny-model
[ -f "$model/config.json" ] || fail "$model missing: scripts/setup.sh makes it (dsv4 make-tiny)"

# Namespaces named by pid: parallel test runs and leftovers of a killed run do not collide.
NH=dsv4h$$ NW=dsv4w$$ HEAD_IP=10.77.0.1 WORKER_IP=10.77.0.2
ip netns add "$NH"
on_exit "ip netns del $NH"
ip netns exec "$NH" ip link set lo up
if [ "$case" != single ]; then
  ip netns add "$NW"
  on_exit "ip netns del $NW"
  ip netns exec "$NW" ip link set lo up
  ip link add "vh$$" type veth peer name "vw$$"
  ip link set "vh$$" netns "$NH"
  ip link set "vw$$" netns "$NW"
  ip -n "$NH" link set "vh$$" name dsv4net0
  ip -n "$NW" link set "vw$$" name dsv4net0
  ip -n "$NH" addr add "$HEAD_IP/24" dev dsv4net0
  ip -n "$NW" addr add "$WORKER_IP/24" dev dsv4net0
  ip -n "$NH" link set dsv4net0 up
  ip -n "$NW" link set dsv4net0 up

  # sshd for root with a key made here; host key pinned in the head's known_hosts (no accept-new).
  mkdir -p "$T/ssh" "$T/head-only" /run/sshd
  ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/id" -C dsv4-test
  ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/host"
  cp "$T/ssh/id.pub" "$T/ssh/authorized_keys"
  echo "$WORKER_IP $(cut -d' ' -f1,2 "$T/ssh/host.pub")" >"$T/ssh/known_hosts"
  cat >"$T/ssh/sshd_config" <<CFG
ListenAddress $WORKER_IP
HostKey $T/ssh/host
AuthorizedKeysFile $T/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $T/ssh/sshd.pid
CFG
  ip netns exec "$NW" unshare --mount --propagation private sh -c \
    "mount -t tmpfs none $T/head-only && exec /usr/sbin/sshd -D -e -f $T/ssh/sshd_config" >"$T/sshd.log" 2>&1 &
  on_exit "kill $! 2>/dev/null; wait $! 2>/dev/null"
  for _ in $(seq 1 50); do
    ip netns exec "$NH" ssh -o BatchMode=yes -o ConnectTimeout=2 -i "$T/ssh/id" \
      -o UserKnownHostsFile="$T/ssh/known_hosts" "root@$WORKER_IP" true 2>/dev/null && break
    sleep 0.2
  done
  ip netns exec "$NH" ssh -o BatchMode=yes -i "$T/ssh/id" -o UserKnownHostsFile="$T/ssh/known_hosts" \
    "root@$WORKER_IP" true || { cat "$T/sshd.log"; fail "ssh into the worker namespace does not work"; }
fi

# The settings file: deploy/.env.example with this test's values (same keys, so the example stays in use).
settings() {  # settings KEY=VALUE...
  local kv
  cp "$SRC/deploy/.env.example" "$T/dsv4.env"
  for kv in "$@"; do
    python3 - "$T/dsv4.env" "$kv" <<'PY'
import re, sys
path, kv = sys.argv[1], sys.argv[2]
key = kv.split("=", 1)[0]
text = open(path).read()
assert re.search(rf"^{key}=", text, re.M), f"{key} not in .env.example"
open(path, "w").write(re.sub(rf"^{key}=.*$", lambda m: kv, text, flags=re.M))
PY
  done
}
in_head() { ip netns exec "$NH" "$@"; }
PORT=8000
common=(DSV4_MODE=native "DSV4_BIN=$BIN" DEVICE=cpu "PORT=$PORT" SERVED_MODEL_NAME=dsv4-demo API_KEY=k-test
        MAX_MODEL_LEN= KV_CACHE_DTYPE= KV_CACHE_MEMORY= NCCL_IB_HCA= NCCL_IB_GID_INDEX= START_TIMEOUT=240
        "STATE_DIR=$T/state" "SSH_OPTS=-i $T/ssh/id -o UserKnownHostsFile=$T/ssh/known_hosts")

chat() {
  local code
  code=$(in_head curl -s --max-time 120 -o "$T/chat.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -H 'Authorization: Bearer k-test' "http://127.0.0.1:$PORT/v1/chat/completions" \
    -d '{"model": "dsv4-demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}')
  [ "$code" = 200 ] || fail "chat through the head: HTTP $code $(head -c 300 "$T/chat.json")"
  python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); assert j["choices"][0]["message"]["role"] == "assistant"' \
    "$T/chat.json" || fail "chat response: $(head -c 300 "$T/chat.json")"
}
stopped() {  # nothing serves, no pid files are left, and the logged pids are gone
  in_head curl -s --max-time 2 "http://127.0.0.1:$PORT/health" >/dev/null && fail "the head still answers after the stop"
  ls "$T"/state/*.pid 2>/dev/null && fail "pid files left after the stop"
  true
}

case "$case" in
  single)
    settings "${common[@]}" NNODES=1 TENSOR_PARALLEL_SIZE=1 WORKER_SSH= "MODEL_DIR=$model"
    in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" || fail "start-dsv4.sh failed"
    on_exit "ip netns exec $NH bash $SRC/scripts/stop-dsv4.sh --env $T/dsv4.env"
    pid=$(cat "$T/state/dsv4-rank0.pid")
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q k-test && fail "the API key is on the command line"
    chat
    in_head bash "$SRC/scripts/stop-dsv4.sh" --env "$T/dsv4.env" || fail "stop-dsv4.sh failed"
    kill -0 "$pid" 2>/dev/null && fail "dsv4 (pid $pid) still runs after the stop"
    stopped
    # A second start refuses a port that is taken, naming it.
    # Directly (not through in_head, a function: its subshell's pid would not be python's), output detached.
    ip netns exec "$NH" python3 -c 'import socket, time; s = socket.socket(); s.bind(("0.0.0.0", 8000)); s.listen()
time.sleep(120)' >/dev/null 2>&1 &
    blocker=$!
    on_exit "kill $blocker 2>/dev/null"
    sleep 0.5
    if in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" >"$T/out" 2>&1; then fail "started on a busy port"; fi
    grep -q "port $PORT is in use" "$T/out" || fail "busy port: $(cat "$T/out")"
    # A STATE_DIR someone else owns is refused (it would hold the launcher and the API key).
    kill "$blocker"; wait "$blocker" 2>/dev/null || true
    mkdir "$T/foreign" && chown nobody "$T/foreign"
    settings "${common[@]}" NNODES=1 TENSOR_PARALLEL_SIZE=1 WORKER_SSH= "MODEL_DIR=$model" "STATE_DIR=$T/foreign"
    if in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" >"$T/out" 2>&1; then fail "used a foreign STATE_DIR"; fi
    grep -q "belongs to another user" "$T/out" || fail "foreign STATE_DIR: $(cat "$T/out")"
    ;;
  preflight)
    cp -r "$model" "$T/head-only/tiny"
    settings "${common[@]}" NNODES=2 TENSOR_PARALLEL_SIZE=2 "WORKER_SSH=root@$WORKER_IP" MASTER_ADDR=$HEAD_IP \
      NCCL_SOCKET_IFNAME=dsv4net0 "MODEL_DIR=$T/head-only/tiny"
    if in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" >"$T/out" 2>&1; then
      cat "$T/out"; fail "start-dsv4.sh succeeded although the model is missing on the worker"
    fi
    cat "$T/out"
    grep -q "preflight failed, nothing was started" "$T/out" || fail "no preflight failure message"
    grep -qF "worker (root@$WORKER_IP): MODEL_DIR $T/head-only/tiny has no config.json there" "$T/out" ||
      fail "the message does not say the model is missing on the worker"
    grep -q "fix: copy the checkpoint" "$T/out" || fail "the message does not say how to fix it"
    # Nothing started on either side: no state files, nothing listening in either namespace.
    [ ! -e "$T/state" ] || fail "start-dsv4.sh created $T/state: $(ls "$T/state")"
    [ -z "$(ip netns exec "$NH" ss -Hltn)" ] || fail "something listens on the head: $(ip netns exec "$NH" ss -Hltnp)"
    [ -z "$(ip netns exec "$NW" ss -Hltn | grep -v ":22 ")" ] || fail "something listens on the worker"
    # A different checkpoint on the worker (its own copy, one config value changed) is refused.
    ip netns exec "$NH" ssh -o BatchMode=yes -i "$T/ssh/id" -o UserKnownHostsFile="$T/ssh/known_hosts" \
      "root@$WORKER_IP" "mkdir -p $T/head-only/tiny && sed 's/\"rms_norm_eps\": *[^,]*/\"rms_norm_eps\": 0.5/' \
        $model/config.json > $T/head-only/tiny/config.json && cp $model/model.safetensors $T/head-only/tiny/"
    if in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" >"$T/out" 2>&1; then fail "started with different checkpoints"; fi
    grep -q "the checkpoints differ between the nodes" "$T/out" || fail "checkpoint comparison: $(cat "$T/out")"
    # An unreachable worker: the ssh problem and its fix, nothing else tried there.
    settings "${common[@]}" NNODES=2 TENSOR_PARALLEL_SIZE=2 "WORKER_SSH=root@10.77.0.3" MASTER_ADDR=$HEAD_IP \
      NCCL_SOCKET_IFNAME=dsv4net0 "MODEL_DIR=$model"
    if in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" >"$T/out" 2>&1; then fail "started without ssh"; fi
    grep -q "cannot ssh to the worker root@10.77.0.3" "$T/out" && grep -q "fix: ssh-copy-id" "$T/out" ||
      fail "ssh failure message: $(cat "$T/out")"
    # A wrong NCCL interface is refused on both nodes the same way.
    settings "${common[@]}" NNODES=2 TENSOR_PARALLEL_SIZE=2 "WORKER_SSH=root@$WORKER_IP" MASTER_ADDR=$HEAD_IP \
      NCCL_SOCKET_IFNAME=eth9 "MODEL_DIR=$model"
    if in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" >"$T/out" 2>&1; then fail "started with a missing interface"; fi
    [ "$(grep -c 'NCCL_SOCKET_IFNAME=eth9 does not exist there' "$T/out")" = 2 ] || fail "interface check: $(cat "$T/out")"
    ;;
  tp2)
    # The harness above is up (namespaces, veth, sshd); the bring-up needs vLLM's multi-rank flags in dsv4.
    # (The help text is read whole first: `grep -q` closing the pipe early would fail it under pipefail.)
    help=$("$BIN" serve --help 2>&1)
    grep -q -- --nnodes <<<"$help" ||
      fail "multi-rank serving not in this build: dsv4 serve has no --nnodes / --tensor-parallel-size yet"
    settings "${common[@]}" NNODES=2 TENSOR_PARALLEL_SIZE=2 "WORKER_SSH=root@$WORKER_IP" MASTER_ADDR=$HEAD_IP \
      MASTER_PORT=29511 NCCL_SOCKET_IFNAME=dsv4net0 "MODEL_DIR=$model"
    on_exit "ip netns exec $NH bash $SRC/scripts/stop-dsv4.sh --env $T/dsv4.env"
    in_head bash "$SRC/scripts/start-dsv4.sh" --env "$T/dsv4.env" || fail "start-dsv4.sh failed"
    wpid=$(cat "$T/state/dsv4-rank1.pid")
    tr '\0' ' ' <"/proc/$wpid/cmdline" | grep -q -- '--headless' || fail "the worker does not run --headless"
    chat
    in_head bash "$SRC/scripts/stop-dsv4.sh" --env "$T/dsv4.env" || fail "stop-dsv4.sh failed"
    kill -0 "$wpid" 2>/dev/null && fail "the worker (pid $wpid) still runs after the stop"
    stopped
    ;;
  *) fail "unknown case $case" ;;
esac
echo "two_host $case: OK"
