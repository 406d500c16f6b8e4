# Session 13, device call 13 (an H100): two more harness runs (separate processes) of the
# float8 prefill twin and its bf16 twin, to see the bar's ratio across runs. The second
# run's rows are the ones merged into today's H100 results; both logs are kept.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
for run in 1 2; do
  bash scripts/gpu_check.sh --no-tests --bench --budget 200 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
  mv $OUT/bench.log $OUT/bench_run$run.log
  grep -E "^## |^  (jattn.attention|cudnn|tokamax.mosaic)|run id" $OUT/bench_run$run.log | grep -v unavailable | cut -c1-120
  grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
done
rm -f $OUT/*.png $OUT/gpu_tests.log
