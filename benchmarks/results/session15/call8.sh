# Session 15, device call 8 (an H200): the session's final float8 prefill (descriptors by
# one add, transpose counts two units per fence, per-thread q_empty arrivals, trimmed
# softmax): two harness runs of the float8 prefill twin with its bf16 twin (device
# clock too), merged into today's H200 results.
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
