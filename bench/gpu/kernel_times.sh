#!/usr/bin/env bash
# Per-kernel device time of a decode step, from ncu's kernel durations (no nsys on the device image):
# runs forward_bench at one batch/context under ncu, keeps the kernels from the first step's embedding on,
# and prints per kernel name: launches per step, device us per step, share. The sum is the device-busy time
# of a step; forward_bench's ms/step minus that sum is launch gaps and host time.
#   bench/gpu/kernel_times.sh OUT_DIR [LAYERS] [BATCH] [CONTEXT]
# KT_PREFILL=N: one prefill of N tokens (one chunk) instead of decode; the "step" is that chunk.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${1:?out dir}
LAYERS=${2:-4} B=${3:-1} C=${4:-1024}
BIN=${BIN:-gpu-pkg/bin}
. bench/gpu/env.sh
NCU=$(command -v ncu || find /opt/nvidia/nsight-compute -maxdepth 2 -name ncu -type f 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "kernel_times: ncu not found"; exit 1; }
P=${KT_PREFILL:-}
if [ -n "$P" ]; then
  csv=$OUT/kernels_L${LAYERS}_P${P}.csv
  RUN=(--batches "" --prefill "$P" --chunk "$P")
else
  csv=$OUT/kernels_L${LAYERS}_B${B}_C${C}.csv
  RUN=(--batches "$B" --contexts "$C" --prefill "")
fi
timeout 400 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
  --print-units base "$BIN/forward_bench" --device cuda --layers "$LAYERS" "${RUN[@]}" \
  --no-profile >"$csv" 2>"$OUT/ncu_stderr.txt"
echo "ncu exit $? -> $csv ($(wc -l <"$csv") lines)"
python3 - "$csv" <<'EOF'
import csv, sys, collections
rows = []
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") == "gpu__time_duration.sum":
        rows.append((r["Kernel Name"].split("(")[0].split("<")[0], float(r["Metric Value"].replace(",", "")) / 1e3))
first = next((i for i, (n, _) in enumerate(rows) if n.endswith("embed_k")), None)
if first is None:
    sys.exit("no embed_k kernel: nothing to attribute")
rows = rows[first:]
steps = sum(1 for n, _ in rows if n.endswith("embed_k"))
agg = collections.defaultdict(lambda: [0, 0.0])
for n, us in rows:
    agg[n][0] += 1
    agg[n][1] += us
total = sum(v[1] for v in agg.values()) / steps
print(f"{steps} steps, {len(rows) / steps:.0f} kernels/step, device-busy {total:.1f} us/step")
for n, (cnt, us) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{cnt / steps:7.1f} x {us / cnt:8.2f} us = {us / steps:9.1f} us/step {100 * us / steps / total:5.1f}%  {n}")
EOF
