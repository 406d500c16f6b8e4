# Session 15, device call 1 (an H100): the float8 prefill's wgmma descriptors by one add
# (DESC_ADD) and the softmax gated behind the hand-over (SOFTMAX_GATE), against the
# session-14 code (both 0): spans, outputs against each other, prefill tests; then an
# Nsight Compute profile of the V transpose kernel alone (16 CTAs).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
S14=benchmarks/results/session14
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=DESC_ADD=0:SOFTMAX_GATE=0,SOFTMAX_GATE=0,default
timeout 150 python3 $S14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 90 python3 $S14/span.py $OUT 7 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -x -p no:cacheprovider -k prefill > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
mkdir -p $OUT/t
timeout 150 "$NCU" --section WarpStateStats --section SourceCounters --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section LaunchStats \
  -k regex:transpose_v --launch-skip 1 --launch-count 1 -f -o $OUT/t/ncu_vt \
  python3 -m benchmarks.fp8_probe --ncu prefill > $OUT/t/ncu_vt.log 2>&1
echo "ncu rc=$?" >> $OUT/t/ncu_vt.log; tail -2 $OUT/t/ncu_vt.log
"$NCU" -i $OUT/t/ncu_vt.ncu-rep --page details > $OUT/t/details.txt 2>&1
grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|L1/TEX Hit|Warp Cycles Per Issued|Issued Ipc|Stall|Registers Per" $OUT/t/details.txt | head -20
"$NCU" -i $OUT/t/ncu_vt.ncu-rep --page source --csv --print-source sass > $OUT/t/source.csv 2>/dev/null
python3 -m benchmarks.ncu_source_summary $OUT/t/source.csv --top 30 > $OUT/t/summary.txt 2>&1
head -50 $OUT/t/summary.txt
rm -f $OUT/t/ncu_vt.ncu-rep; gzip -f $OUT/t/source.csv
