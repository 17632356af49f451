#!/usr/bin/env bash
# ncu's analysis sections (speed of light, occupancy, launch, warp stalls, memory) for the kernels whose names
# match a regex, over a short forward_bench decode run: what bounds a kernel, before changing it.
#   bench/gpu/ncu_sections.sh OUT_FILE KERNEL_REGEX [LAYERS] [BATCH] [CONTEXT] [COUNT]   (NS_PREFILL=N: a prefill)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUTF=${1:?out file} RE=${2:?kernel regex}
LAYERS=${3:-2} B=${4:-1} C=${5:-1024} COUNT=${6:-6}
BIN=${BIN:-gpu-pkg/bin}
. bench/gpu/env.sh
NCU=$(command -v ncu || find /opt/nvidia/nsight-compute -maxdepth 2 -name ncu -type f 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu_sections: ncu not found"; exit 1; }
# Skip the first launches (warm-up step); one launch of each matching kernel per step after that.
# NS_PREFILL=N: one prefill chunk of N tokens instead (no warm-up to skip: the first launches are profiled).
RUN=(--batches "$B" --contexts "$C" --prefill "") SKIP=8
if [ -n "${NS_PREFILL:-}" ]; then RUN=(--batches "" --prefill "$NS_PREFILL" --chunk "$NS_PREFILL") SKIP=0; fi
timeout 300 "$NCU" --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis -k "regex:$RE" --launch-skip "$SKIP" \
  --launch-count "$COUNT" "$BIN/forward_bench" --device cuda --layers "$LAYERS" "${RUN[@]}" --no-profile \
  >"$OUTF" 2>&1
echo "ncu exit $? -> $OUTF"
# The lines that say what bounds each kernel.
grep -E "^  [a-z_]+.*\(|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|Executed Ipc|Local Memory|Theoretical Occupancy|Block Limit|Grid Size|Stall|Issued Ipc|One or More" "$OUTF" | head -120
