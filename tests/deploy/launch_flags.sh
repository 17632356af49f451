#!/usr/bin/env bash
# deploy.launch_flags: deploy/dsv4-launch.sh (the image's entrypoint and the native mode's launcher) turns the
# settings into exactly vLLM's multi-rank flags for the head and the worker, keeps the API key off the command
# line, and passes explicit arguments through. Runs without the multi-rank build: it checks the mapping only.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
L=$SRC/deploy/dsv4-launch.sh
expect() {  # expect WHAT "EXPECTED ARGV (one line)" ENV...
  local what=$1 want=$2 got
  shift 2
  got=$(env -i PATH="$PATH" DSV4_BIN=/x/dsv4 "$@" bash "$L" --print | tr '\n' ' ' | sed 's/ $//')
  [ "$got" = "$want" ] || fail "$what: got    '$got'
  expected '$want'"
}
expect "demo" "/x/dsv4 serve --host 0.0.0.0 --port 8000"
expect "head" "/x/dsv4 serve --host 0.0.0.0 --port 9000 --model /model --served-model-name m --max-model-len 4096 \
--kv-cache-dtype fp8 --kv-cache-memory 2GiB --device cuda --tensor-parallel-size 2 --nnodes 2 --node-rank 0 \
--master-addr 10.0.0.1 --master-port 29500" PORT=9000 MODEL_PATH=/model SERVED_MODEL_NAME=m MAX_MODEL_LEN=4096 \
  KV_CACHE_DTYPE=fp8 KV_CACHE_MEMORY=2GiB DEVICE=cuda TENSOR_PARALLEL_SIZE=2 NNODES=2 NODE_RANK=0 \
  MASTER_ADDR=10.0.0.1 API_KEY=secret
expect "worker" "/x/dsv4 serve --host 0.0.0.0 --port 8000 --tensor-parallel-size 2 --nnodes 2 --node-rank 1 \
--master-addr 10.0.0.1 --master-port 29511 --headless --max-num-seqs 4" TENSOR_PARALLEL_SIZE=2 NNODES=2 NODE_RANK=1 \
  MASTER_ADDR=10.0.0.1 MASTER_PORT=29511 HEADLESS=1 DSV4_EXTRA_ARGS="--max-num-seqs 4"
expect "one node, 8 GPUs" "/x/dsv4 serve --host 0.0.0.0 --port 8000 --tensor-parallel-size 8" TENSOR_PARALLEL_SIZE=8
got=$(env -i PATH="$PATH" DSV4_BIN=/x/dsv4 bash "$L" --print inspect --model /m 2>&1 || true)
# --print with arguments runs them unchanged: here /x/dsv4 does not exist, so exec fails naming it.
echo "$got" | grep -q '/x/dsv4' || fail "pass-through: $got"
# A node of a 2-node deployment without MASTER_ADDR is refused, naming it.
if out=$(env -i PATH="$PATH" DSV4_BIN=/x/dsv4 NNODES=2 bash "$L" --print 2>&1); then fail "NNODES=2 without MASTER_ADDR accepted"; fi
echo "$out" | grep -q MASTER_ADDR || fail "the refusal does not name MASTER_ADDR: $out"
# The key reaches dsv4 as DSV4_API_KEY in the environment (a fake dsv4 prints what it got).
printf '#!/bin/sh\necho "argv: $*"\necho "key: $DSV4_API_KEY gloo: $GLOO_SOCKET_IFNAME"\n' >"$T/dsv4"
chmod +x "$T/dsv4"
out=$(env -i PATH="$PATH" DSV4_BIN="$T/dsv4" API_KEY=s3cret NCCL_SOCKET_IFNAME=eth7 bash "$L")
echo "$out" | grep -q '^argv: .*s3cret' && fail "the API key is on the command line"
echo "$out" | grep -qx 'key: s3cret gloo: eth7' || fail "environment passed to dsv4: $out"
echo "launch flags: OK"
