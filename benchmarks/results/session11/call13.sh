# Session 11, device call 13: Nsight Compute stall samples of the final float8 prefill
# kernel (row sums from the tensor cores), summarized by opcode and instruction.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
OUT=$OUT/n bash benchmarks/ncu_fp8_prefill.sh > /dev/null 2>&1
tail -2 $OUT/n/ncu_prefill.log
python3 -m benchmarks.ncu_source_summary $OUT/n/ncu_prefill_source.csv --top 60 > $OUT/n/summary.txt 2>&1
head -30 $OUT/n/summary.txt
sort -k2 -g -r $OUT/n/ncu_prefill_stalls.txt | head -16
rm -f $OUT/n/ncu_prefill.ncu-rep; gzip -f $OUT/n/ncu_prefill_source.csv
ls -la $OUT/n
