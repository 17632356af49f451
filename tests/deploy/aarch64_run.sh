#!/usr/bin/env bash
# aarch64.* tests: runs one cross-compiled test binary (scripts/setup_aarch64.sh builds them) under qemu-aarch64.
#   aarch64_run.sh BINARY [EXPECTED_OUTPUT_LINE [GTEST_FILTER]]
# Fails, never skips, when qemu or the binary is missing: CI must cross-compile and run them.
set -euo pipefail
bin=$1 expect=${2:-} filter=${3:-*}
fail() { echo "FAIL: $*"; exit 1; }
command -v qemu-aarch64 >/dev/null ||
  fail "qemu-aarch64 not found: install qemu-user (scripts/setup_aarch64.sh does, via scripts/setup.sh)"
[ -f "$bin" ] || fail "$bin missing: run scripts/setup.sh (it calls scripts/setup_aarch64.sh; unset DSV4_SKIP_AARCH64)"
# ELF e_machine (offset 18, little endian) must be 0xb7 = EM_AARCH64: a host binary here would prove nothing.
machine=$(od -An -tx2 -j18 -N2 "$bin" | tr -d ' ')
[ "$machine" = 00b7 ] || fail "$bin is not an aarch64 ELF (e_machine 0x$machine)"
# One OpenMP thread: qemu-user runs libgomp's spin-waiting workers so slowly on two shared cores that the kernels
# suite takes over 10 minutes with the default team (11 s with one thread). The code paths are the same.
export OMP_NUM_THREADS=1
# The arm64 dynamic loader and libc come from the cross sysroot; the multiarch libraries (libfmt, libgomp...)
# from /usr/lib/aarch64-linux-gnu, which libc6:arm64's ld.so.conf entry names.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" --gtest_brief=1 --gtest_filter="$filter" >"$log" 2>&1 || rc=$?
cat "$log"
[ "$rc" = 0 ] || fail "$bin exited $rc under qemu-aarch64"
grep -q '^\[  PASSED  \] [1-9]' "$log" || fail "$bin ran no passing tests"
if [ -n "$expect" ]; then
  grep -qxF "$expect" "$log" || fail "$bin did not print '$expect'"
fi
echo "aarch64: $(basename "$bin") passed under qemu-aarch64"
