#!/usr/bin/env bash
# deploy.compose_config: `docker-compose config` (no engine needed) accepts deploy/docker-compose.yml with
# deploy/.env.example, the result carries what a multi-node GPU deployment needs, every variable the Compose
# file uses is documented in the example, and a missing MODEL_DIR is refused (so the check is not vacuous).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
need docker-compose docker-compose
need python3 python3
D=$SRC/deploy
docker-compose --env-file "$D/.env.example" -f "$D/docker-compose.yml" config >"$T/config.yml" 2>"$T/err" ||
  { cat "$T/err"; fail "docker-compose config rejected deploy/docker-compose.yml with deploy/.env.example"; }
for want in 'network_mode: host' 'ipc: host' '/dev/infiniband:/dev/infiniband' ':/model:ro' 'driver: nvidia' \
    'NCCL_SOCKET_IFNAME: enp1s0f1np1' 'NCCL_IB_HCA: rocep1s0f1' "NCCL_IB_GID_INDEX: '3'" "NODE_RANK: '0'" \
    'MASTER_ADDR: 192.168.100.10' "MASTER_PORT: '29500'" "HEADLESS: '0'" 'SERVED_MODEL_NAME: deepseek-v4-flash' \
    "MAX_MODEL_LEN: '65536'" 'KV_CACHE_DTYPE: fp8' 'KV_CACHE_MEMORY: 16GiB' "PORT: '8000'" 'API_KEY:'; do
  grep -qF -- "$want" "$T/config.yml" || fail "the resolved Compose file lacks '$want'"
done
# Every ${VAR} of the Compose file has a documented line in .env.example.
for v in $(grep -oE '\$\{[A-Z_0-9]+' "$D/docker-compose.yml" | cut -c3- | sort -u); do
  grep -qE "^$v=" "$D/.env.example" || fail "$v is used by docker-compose.yml but not in .env.example"
  grep -B1 -E "^$v=" "$D/.env.example" | head -1 | grep -q '^#' || fail "$v in .env.example has no comment"
done
docker-compose --env-file "$D/.env.example" -f "$D/docker-compose.cpu.yml" config >/dev/null 2>"$T/err" ||
  { cat "$T/err"; fail "docker-compose config rejected deploy/docker-compose.cpu.yml"; }
grep -v '^MODEL_DIR=' "$D/.env.example" >"$T/no-model.env"
if docker-compose --env-file "$T/no-model.env" -f "$D/docker-compose.yml" config >/dev/null 2>"$T/err2"; then
  fail "docker-compose config accepted a deployment without MODEL_DIR"
fi
grep -q MODEL_DIR "$T/err2" || fail "the missing-MODEL_DIR error does not name it: $(cat "$T/err2")"
echo "compose: config OK"
