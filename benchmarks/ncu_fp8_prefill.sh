#!/usr/bin/env bash
# Nsight Compute on the CUDA FP8 prefill kernel (B4 T4096 H32 D128 causal, the second
# call): warp-state totals and per-SASS-instruction stall samples.
#   OUT=dir benchmarks/ncu_fp8_prefill.sh
# Writes $OUT/ncu_prefill.ncu-rep, ncu_prefill_stalls.txt (the kernel's stall reasons,
# cycles per issued instruction) and ncu_prefill_source.csv (SASS with samples).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/ncu-out}"; mkdir -p "$OUT"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
export PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false  # no pool to save per replay pass
timeout 240 "$NCU" --section WarpStateStats --section SourceCounters --section SpeedOfLight \
  --section ComputeWorkloadAnalysis --section InstructionStats --section LaunchStats \
  -k regex:prefill_fp8 --launch-skip 1 --launch-count 1 -f -o "$OUT/ncu_prefill" \
  "${PYTHON:-python3}" -m benchmarks.fp8_probe --ncu prefill >"$OUT/ncu_prefill.log" 2>&1
echo "ncu rc=$?" >>"$OUT/ncu_prefill.log"
"$NCU" -i "$OUT/ncu_prefill.ncu-rep" --page raw --csv 2>&1 | python3 -c "
import csv, sys
rows = list(csv.reader(sys.stdin))
if len(rows) < 3: print('no raw page', rows[:3]); sys.exit()
for name, unit, val in zip(rows[0], rows[1], rows[2]):
  if 'issue_stalled' in name and 'per_issue_active' in name or name.startswith(('sm__cycles', 'smsp__inst_executed.', 'gpu__time_duration', 'smsp__warps_active')):
    print(f'{name:90s} {val:>14s} {unit}')
" >"$OUT/ncu_prefill_stalls.txt"
"$NCU" -i "$OUT/ncu_prefill.ncu-rep" --page source --csv --print-source sass \
  >"$OUT/ncu_prefill_source.csv" 2>"$OUT/ncu_prefill_source.err"
ls -la "$OUT"; sort -k2 -g -r "$OUT/ncu_prefill_stalls.txt" | head -30
