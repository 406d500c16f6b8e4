# Session 13, device call 14 (an H100): all float8 GPU tests on the final code, then the
# harness's float8 decode twin and its bf16 twin (the CUDA decode's source is unchanged,
# but common.cuh changed, so its library was rebuilt), merged into today's H100 results.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 200 -- --workloads decode_gqa32x8_b32_s4096_d128_p16_fp8,decode_gqa32x8_b32_s4096_d128_p16 --device-span > /dev/null 2>&1
grep -E "^## |^  (jattn|cudnn|tokamax)" $OUT/bench.log | grep -v unavailable | cut -c1-120
grep -E "^\| \`decode_gqa32x8_b32_s4096_d128_p16" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer\|[0-9]* GB/s ([0-9]*%)" | tr '\n' ' '
rm -f $OUT/*.png $OUT/gpu_tests.log
