# Session 12, device calls 14 and 15 (the wave chooser on host and jit, then on the host
# only, jit keeping 4): the Pallas decode GPU tests, then the harness's decode workloads
# (and the float8 decode twin), merged into today's results.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 240 python3 -m pytest tests/test_decode_pallas.py tests/test_fp8_gpu.py -q -k "decode or plan" -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 250 -- --workloads decode_skewed_lengths,decode_gqa32x8_b32_s4096_d128_p16,decode_gqa32x8_b32_s4096_d128_p16_fp8,decode_gqa32x8_b128_s2048_d128_p16,decode_mha32_b32_s4096_d128_p16 --device-span > /dev/null 2>&1
grep -E "^## |^  (jattn|cudnn|tokamax)|run id" $OUT/bench.log | grep -v unavailable | cut -c1-110
grep -E "^\| \`decode" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
rm -f $OUT/*.png $OUT/gpu_tests.log
