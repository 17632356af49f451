# shellcheck shell=bash
# Sourced by the bench/gpu scripts: the carried package's libraries and the device image's NCCL (not packed:
# too large to carry; the image has it as the nvidia-nccl wheel) on LD_LIBRARY_PATH, NVLink multicast off.
# PKG: the package folder (default gpu-pkg under the repository root).
PKG=${PKG:-$PWD/gpu-pkg}
export NCCL_NVLS_ENABLE=0
if [ -d "$PKG/lib" ]; then
  NCCL_DIR=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
  export LD_LIBRARY_PATH=$PKG/lib${NCCL_DIR:+:$NCCL_DIR}:${LD_LIBRARY_PATH:-}
fi
