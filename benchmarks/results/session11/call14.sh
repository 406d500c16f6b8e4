# Session 11, device call 14: Nsight Compute stall samples of the CUDA float8 decode (TMA
# path, B32 S4096 pages of 16), summarized by opcode and instruction.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
mkdir -p $OUT/d
timeout 300 "$NCU" --section WarpStateStats --section SourceCounters --section SpeedOfLight \
  --section MemoryWorkloadAnalysis --section LaunchStats -k regex:decode_fp8 --launch-skip 1 \
  --launch-count 1 -f -o $OUT/d/ncu_decode python3 -m benchmarks.fp8_probe --ncu decode > $OUT/d/ncu_decode.log 2>&1
echo "ncu rc=$?" >> $OUT/d/ncu_decode.log; tail -2 $OUT/d/ncu_decode.log
"$NCU" -i $OUT/d/ncu_decode.ncu-rep --page details > $OUT/d/details.txt 2>&1
grep -E "Duration|DRAM Throughput|Memory Throughput|L2 Hit|Achieved Occupancy|Warp Cycles Per Issued|Registers Per" $OUT/d/details.txt | head -12
"$NCU" -i $OUT/d/ncu_decode.ncu-rep --page source --csv --print-source sass > $OUT/d/source.csv 2>/dev/null
python3 -m benchmarks.ncu_source_summary $OUT/d/source.csv --top 30 > $OUT/d/summary.txt 2>&1
head -45 $OUT/d/summary.txt
rm -f $OUT/d/ncu_decode.ncu-rep; gzip -f $OUT/d/source.csv
