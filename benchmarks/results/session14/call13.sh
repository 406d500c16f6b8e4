# Session 14, device call 13 (an H200): one harness run of the float8 prefill twin with its
# bf16 twin (device clock too) on the final code, merged into the H200 results of the day.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 150 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
grep -E "^## |^  (jattn.attention|cudnn|tokamax.mosaic)|device clock: span" $OUT/bench.log | grep -v unavailable | cut -c1-160
grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
rm -f $OUT/*.png $OUT/gpu_tests.log
