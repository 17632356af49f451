#!/usr/bin/env bash
# One-shot set-up on a fresh Debian 12 machine: system packages, the pinned tokenizer, configure, build.
# Idempotent; re-running only rebuilds what changed. BUILD_DIR (default build) picks the build folder.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

PKGS=(build-essential cmake ninja-build pkg-config git curl ca-certificates nodejs npm
      nlohmann-json3-dev libfmt-dev libspdlog-dev libcli11-dev libpcre2-dev libxxhash-dev libboost-dev libcpp-httplib-dev
      libgtest-dev libgmock-dev libbenchmark-dev libgloo-dev iproute2 prometheus python3-numpy clang libclang-rt-14-dev)
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
# The pinned npm clients the server tests drive (the openai SDK; Claude Code and Codex CLI): the tests run
# `npm ci` again, which then only needs the npm cache.
for d in tests/server/client tests/server/agents; do
  (cd "$d" && npm ci --no-audit --no-fund --loglevel=error) || echo "setup: npm ci in $d failed (offline?)"
done
echo "setup: built $BUILD_DIR/dsv4"
