# shellcheck shell=bash
# Sourced by the deploy tests that need a Docker engine. Uses a running engine when DOCKER_HOST or
# /var/run/docker.sock answers; else starts a private dockerd (root required: CI runs as root) with its data
# under $DSV4_BINARY_DIR/deploy-docker, no bridge and no iptables (every container here uses host networking),
# and stops it on exit. DSV4_DOCKER_OPTOUT=1 turns "cannot start dockerd" from a failure into a pass with a
# warning, for machines where that is known to be impossible; CI must not set it.
DOCKERD_PID=""
docker_up() {
  command -v docker >/dev/null || fail "docker client not found: install docker.io (scripts/setup.sh does)"
  export DOCKER_BUILDKIT=0  # the legacy builder: docker.io 20.10's CLI-less BuildKit needs buildx, absent here
  if docker info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null || fail "dockerd not found: install docker.io (scripts/setup.sh does)"
  if [ "$(id -u)" != 0 ]; then
    [ "${DSV4_DOCKER_OPTOUT:-0}" = 1 ] && { echo "WARNING: not root, cannot start dockerd; DSV4_DOCKER_OPTOUT=1"; exit 0; }
    fail "no Docker engine running and not root, so dockerd cannot be started here (DSV4_DOCKER_OPTOUT=1 to accept)"
  fi
  local root=${DSV4_BINARY_DIR:?}/deploy-docker
  mkdir -p "$root/data" "$T/exec"
  export DOCKER_HOST="unix://$T/docker.sock"
  dockerd --data-root "$root/data" --exec-root "$T/exec" --pidfile "$T/dockerd.pid" -H "$DOCKER_HOST" \
    --bridge=none --iptables=false --ip-masq=false >"$T/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$T/dockerd.log"; fail "dockerd exited"; }
    sleep 0.5
  done
  tail -20 "$T/dockerd.log"
  fail "dockerd did not answer in 60 s"
}
docker_down() {
  [ -n "$DOCKERD_PID" ] || return 0
  kill "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$DOCKERD_PID" 2>/dev/null || true
}

# The configured Debian mirror (deb822 .sources or one-line .list), for debootstrap: CI reaches no registry, and
# the mirror apt already uses is the one source we know works. DSV4_DEBIAN_MIRROR overrides.
debian_mirror() {
  if [ -n "${DSV4_DEBIAN_MIRROR:-}" ]; then echo "$DSV4_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -E '^(URIs:|deb )' | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -1 | tr -d ' ')
  [ -n "$m" ] || fail "no Debian mirror in /etc/apt/sources.list*: set DSV4_DEBIAN_MIRROR"
  echo "$m"
}

# base_image NAME: a Debian bookworm minbase image made locally (debootstrap + docker import); the rootfs tarball
# is cached in $DSV4_BINARY_DIR/deploy-cache so re-runs skip debootstrap.
base_image() {
  local name=$1 cache=${DSV4_BINARY_DIR:?}/deploy-cache tarball
  tarball=$cache/bookworm-minbase.tar
  if docker image inspect "$name" >/dev/null 2>&1; then return 0; fi
  command -v debootstrap >/dev/null || fail "debootstrap not found: install debootstrap (scripts/setup.sh does)"
  if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    local mirror rootfs="$T/rootfs"
    mirror=$(debian_mirror)
    echo "image: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$T/debootstrap.log" 2>&1 ||
      { tail -20 "$T/debootstrap.log"; fail "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  docker import "$tarball" "$name" >/dev/null
}
