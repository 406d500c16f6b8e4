# Session 15, device call 8 (asked for an H200; the tool gave an H100, so these are two
# more H100 runs): the final float8 prefill, two harness runs of its twin with the bf16
# twin (device clock too). The run wrote a fresh H100 file (no base copied for that card);
# its rows were merged locally into today's H100 results with benchmarks.run.merge.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
cp benchmarks/results/2026-11-26-h200.json $OUT/2026-11-27-h200.json
for run in 1 2; do
bash scripts/gpu_check.sh --no-tests --bench --budget 150 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
cp $OUT/bench.log $OUT/bench_run$run.log
grep -E "^  (jattn.attention|cudnn|tokamax.mosaic)|device clock: span" $OUT/bench.log | grep -v unavailable | cut -c1-110 | head -8
grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
done
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/bench.log
