#!/usr/bin/env bash
# Builds the GPU binaries here (nvcc 13.0, sm_90a for the H200) and packs what bench/gpu/run.sh needs on the
# device machine into gpu-pkg/ (git-ignored): stripped binaries, the non-system shared libraries they load,
# and the tiny-a fixture (../shared does not travel with the working tree).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD_DIR:-build-gpu}
[ -f "$B/CMakeCache.txt" ] || cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a
# PKG_BINS: which binaries (the carry limit is 64 MiB; `xz -9 -T1` packed seven, the *_base two included, in 31 MB:
# their kernels are the same bytes, which xz -6's smaller window did not share). BASELINE_DIR: a build folder of an earlier commit; its forward_bench and
# cuda_ops_bench come along as *_base, for before/after timings in one device call (bench/gpu/ab_base.sh).
BINS=${PKG_BINS:-test_kernels test_model dsv4 cuda_ops_bench forward_bench itl_bench}
read -r -a BINS <<<"$BINS"
ninja -C "$B" "${BINS[@]}"
rm -rf gpu-pkg && mkdir -p gpu-pkg/bin gpu-pkg/lib gpu-pkg/shared/fixtures
for b in "${BINS[@]}"; do
  strip -o "gpu-pkg/bin/$b" "$B/$b"
done
if [ -n "${BASELINE_DIR:-}" ]; then
  for b in forward_bench cuda_ops_bench; do strip -o "gpu-pkg/bin/${b}_base" "$BASELINE_DIR/$b"; done
  git -C "$BASELINE_DIR/.." rev-parse --short HEAD > gpu-pkg/baseline_commit 2>/dev/null || true
fi
# Libraries outside glibc/libstdc++/the driver, which the device image may lack. NCCL (218 MB, over the
# device tool's 64 MiB carry) is not packed: run.sh finds the device image's own (its nvidia-nccl-cu13 wheel).
ldd gpu-pkg/bin/* | awk '/=> \// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux|libcuda|libnccl)\.so' |
  while read -r l; do cp -L "$l" gpu-pkg/lib/; done
cp -r "$(cd ../shared && pwd)/fixtures/tiny-a" gpu-pkg/shared/fixtures/
cd ../shared && pwd > ../main/gpu-pkg/shared_path
du -sh ../main/gpu-pkg
