# Session 17, device call 6 (an H100): the final decode code (K refilled after Q K^T, P V
# from registers): decode GPU tests, then two harness runs of the decode workloads and
# the float8 decode twin.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 150 python3 -m pytest tests/test_decode_pallas.py tests/test_fp8_gpu.py -k "decode or Decode" -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/
W=decode_gqa32x8_b32_s4096_d128_p16,decode_gqa32x8_b128_s2048_d128_p16,decode_mha32_b32_s4096_d128_p16,decode_skewed_lengths,decode_gqa32x8_b32_s4096_d128_p16_fp8
for run in 1 2; do
bash scripts/gpu_check.sh --no-tests --bench --budget 170 -- --workloads $W --device-span > /dev/null 2>&1
cp $OUT/bench.log $OUT/bench_run$run.log
grep -E "^\| \`decode" $OUT/*.md | cut -c1-200
done
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/bench.log
