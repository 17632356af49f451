#!/usr/bin/env bash
# aarch64.dsv4_tokenize: the cross-compiled dsv4 binary (whole stack: CLI, tokenizer with arm64 PCRE2, model
# loading code) runs under qemu-aarch64 and tokenizes text with bytes >= 0x80 exactly as the native build does
# (char is unsigned on aarch64, signed on x86: byte-level BPE is where that would show).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
need qemu-aarch64 qemu-user
xbin=${DSV4_BINARY_DIR:?}/aarch64/dsv4
[ -f "$xbin" ] || fail "$xbin missing: run scripts/setup.sh (it calls scripts/setup_aarch64.sh; unset DSV4_SKIP_AARCH64)"
[ "$(od -An -tx2 -j18 -N2 "$xbin" | tr -d ' ')" = 00b7 ] || fail "$xbin is not an aarch64 ELF"
tok=$SRC/assets/tokenizer/tokenizer.json
[ -f "$tok" ] || fail "$tok missing: run scripts/fetch_tokenizer.sh"
text='Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ — naïve café, 日本語のテキスト, emoji 🙂 and \x7f bytes'
want=$("${DSV4_BIN:?}" tokenize --tokenizer "$tok" --text "$text") || fail "native dsv4 tokenize failed"
got=$(OMP_NUM_THREADS=1 qemu-aarch64 -L /usr/aarch64-linux-gnu "$xbin" tokenize --tokenizer "$tok" --text "$text") ||
  fail "aarch64 dsv4 tokenize failed under qemu"
[ "$got" = "$want" ] || fail "aarch64 ids differ from the native ones:
  aarch64 $got
  native  $want"
# The documented V4 example (spec/dependencies.md) starts the same on both.
case "$got" in '[19923,3,223,5464,5008,1175,19,940,'*) ;; *) fail "unexpected ids $got" ;; esac
echo "aarch64: dsv4 tokenize matches the native build ($(echo "$got" | tr ',' '\n' | wc -l) ids)"
