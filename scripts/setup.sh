#!/usr/bin/env bash
# One-shot set-up on a fresh Debian 12 machine: system packages, the pinned tokenizer, configure, build.
# Idempotent; re-running only rebuilds what changed. BUILD_DIR (default build) picks the build folder.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

PKGS=(build-essential cmake ninja-build pkg-config git curl ca-certificates nodejs npm
      nlohmann-json3-dev libfmt-dev libspdlog-dev libcli11-dev libpcre2-dev libxxhash-dev libboost-dev libcpp-httplib-dev
      libgtest-dev libgmock-dev libbenchmark-dev libgloo-dev prometheus python3-numpy clang libclang-rt-14-dev
      # the deploy.* tests: Compose validation, shellcheck, the image (debootstrap base), two hosts over ssh
      docker-compose shellcheck debootstrap debian-archive-keyring openssh-server openssh-client iproute2)
# Debian's docker.io only where no engine is installed: DGX OS (Spark) ships docker-ce, which it would conflict with.
command -v dockerd >/dev/null || PKGS+=(docker.io)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from outside Debian (already on PATH): do not fight that installation.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

scripts/fetch_tokenizer.sh

GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$BUILD_DIR" -j"$(nproc)"  # dsv4, dsv4-test-server and the tests
# The embedded demo model `dsv4 serve` runs without --model (deterministic; ~140 MB, about a second).
if [ ! -f "$BUILD_DIR/tiny-model/model.safetensors" ]; then
  "$BUILD_DIR/dsv4" make-tiny --out "$BUILD_DIR/tiny-model" --tokenizer assets/tokenizer/tokenizer.json
fi
# The aarch64 cross build (x86-64 hosts only; the aarch64.* tests run it under qemu). DSV4_SKIP_AARCH64=1 skips
# it on a developer machine; those tests then fail saying so.
[ "${DSV4_SKIP_AARCH64:-0}" = 1 ] || BUILD_DIR="$BUILD_DIR" scripts/setup_aarch64.sh
# The pinned npm clients the server tests drive (the openai SDK; Claude Code and Codex CLI): the tests run
# `npm ci` again, which then only needs the npm cache.
for d in tests/server/client tests/server/agents; do
  (cd "$d" && npm ci --no-audit --no-fund --loglevel=error) || echo "setup: npm ci in $d failed (offline?)"
done
echo "setup: built $BUILD_DIR/dsv4"
