#!/usr/bin/env bash
# Builds the GPU binaries here (nvcc 13.0, sm_90a for the H200) and packs what bench/gpu/run.sh needs on the
# device machine into gpu-pkg/ (git-ignored): stripped binaries, the non-system shared libraries they load,
# and the tiny-a fixture (../shared does not travel with the working tree).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD_DIR:-build-gpu}
[ -f "$B/CMakeCache.txt" ] || cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a
ninja -C "$B" test_kernels test_model dsv4 cuda_ops_bench forward_bench itl_bench
rm -rf gpu-pkg && mkdir -p gpu-pkg/bin gpu-pkg/lib gpu-pkg/shared/fixtures
for b in test_kernels test_model dsv4 cuda_ops_bench forward_bench itl_bench; do
  strip -o "gpu-pkg/bin/$b" "$B/$b"
done
# Libraries outside glibc/libstdc++/the driver, which the device image may lack. NCCL (218 MB, over the
# device tool's 64 MiB carry) is not packed: run.sh finds the device image's own (its nvidia-nccl-cu13 wheel).
ldd gpu-pkg/bin/* | awk '/=> \// {print $3}' | sort -u |
  grep -vE '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux|libcuda|libnccl)\.so' |
  while read -r l; do cp -L "$l" gpu-pkg/lib/; done
cp -r "$(cd ../shared && pwd)/fixtures/tiny-a" gpu-pkg/shared/fixtures/
cd ../shared && pwd > ../main/gpu-pkg/shared_path
du -sh ../main/gpu-pkg
