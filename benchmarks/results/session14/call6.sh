# Session 14, device call 6 (an H100): dQ fused into the dK/dV kernel for MHA at head_dim
# 128: compiled prefill tests, bwd_probe (fused against the two kernels, 5 rounds), then
# the harness's fwd+bwd workload with its peers (device clock too), merged into today's
# H100 results.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 200 python3 -m pytest tests/test_prefill_pallas.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
timeout 150 python3 -m benchmarks.bwd_probe --rounds 5 --out $OUT > $OUT/bwd_probe.log 2>&1; echo "bwd_probe rc=$?"
grep -E "ms " $OUT/bwd_probe.log | tail -4 | cut -c1-200
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 180 -- --workloads attention_bwd_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
grep -E "^## |^  (jattn|cudnn|tokamax)|device clock: span|run id" $OUT/bench.log | grep -v unavailable | cut -c1-170
grep -E "^\| \`attention_bwd" $OUT/*.md | cut -c1-300
rm -f $OUT/*.png $OUT/gpu_tests.log
