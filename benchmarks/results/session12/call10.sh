# Session 12, device call 10: steady clock and power of each prefill alone
# (benchmarks.power_probe), then the float8 twins and their bf16 twins in the harness once
# more (a third run under the new timing for issue 6).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 200 python3 -m benchmarks.power_probe --out $OUT > $OUT/power_probe.log 2>&1; echo "power probe rc=$?"
grep -E "TFLOP/s at|fp8 /" $OUT/power_probe.log | cut -c1-160
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 250 -- --workloads decode_gqa32x8_b32_s4096_d128_p16_fp8,decode_gqa32x8_b32_s4096_d128_p16,prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 > /dev/null 2>&1
grep -E "^## |^  (jattn|cudnn|tokamax)|run id" $OUT/bench.log | grep -v unavailable | cut -c1-110
grep -E "_fp8\`" $OUT/*.md | grep -o "[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/*.md
