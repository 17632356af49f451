#!/usr/bin/env bash
# aarch64 cross build for CI on an x86-64 Debian/Ubuntu host (called by scripts/setup.sh; DSV4_SKIP_AARCH64=1
# skips it, and then the aarch64.* tests fail saying so). Installs the cross compiler, qemu-user and the arm64
# -dev packages through multiarch, then cross-compiles (CPU only) the core, kernels and tokenizer test binaries
# into $BUILD_DIR/aarch64. The aarch64.* CTest tests run those under qemu-aarch64.
#
# Which tests run under qemu, and why only these: test_kernels holds every architecture-specific line (the
# AVX2/F16C vs NEON de-quantization) and asserts the same bits on whichever path is compiled; test_core the dtype
# bit conversions; test_tokenizer (a filtered subset: byte-level BPE, UTF-8 handling, the DSML parser) is where
# char signedness (unsigned on aarch64) would show. Those three link their own layer alone. The layers from
# src/dist up are not cross-compiled: they link Gloo, whose Debian package is not multiarch (the arm64 and amd64
# libgloo-dev cannot be installed together); they are portable C++ with no architecture-specific code. Under
# qemu-user each tokenizer test takes seconds (the whole suite ran > 10 minutes), and the model / runtime /
# server suites are heavier still. On an arm64 machine (DGX Spark, GH200) scripts/setup.sh builds everything
# natively and ctest runs the full suite there.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
XDIR="$BUILD_DIR/aarch64"

case "$(uname -m)" in
  x86_64) ;;
  *) echo "setup_aarch64: host is $(uname -m), not x86-64: nothing to cross-compile"; exit 0 ;;
esac

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
# Host-side tools, then the arm64 libraries the two layers and GoogleTest need. Header-only packages
# (nlohmann-json3-dev: Multi-Arch foreign) come from the host install and serve both architectures.
PKGS=(g++-aarch64-linux-gnu qemu-user libfmt-dev:arm64 libspdlog-dev:arm64 libpcre2-dev:arm64 libgtest-dev:arm64)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
  fi
  echo "setup_aarch64: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -f "$XDIR/CMakeCache.txt" ]; then
  cmake -S . -B "$XDIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
    -DDSV4_ENABLE_CUDA=OFF
fi
# Test discovery runs the binaries under qemu at build time: one OpenMP thread (see tests/deploy/aarch64_run.sh).
OMP_NUM_THREADS=1 cmake --build "$XDIR" -j"$(nproc)" --target test_core test_kernels test_tokenizer
echo "setup_aarch64: built $XDIR/test_core, $XDIR/test_kernels and $XDIR/test_tokenizer (aarch64)"
