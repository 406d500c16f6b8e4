# Session 20, device call 3: the compiled forward tests with Config.early_qk (the dense op
# at head dims > 128, and test_early_qk_matches_the_plain_step at 64), then the harness's
# D256 causal row (interleaved closest pair), merged into the day's file of the card.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 400 python3 -m pytest tests/test_prefill_pallas.py tests/test_block_sparse.py "tests/test_ops.py" -k "not decode and not merge and not append_kv and not float8_append" -q -p no:cacheprovider -x > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -4 $OUT/pytest.log
case "$GPU" in
  *H100*) cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/ ;;
  *H200*) cp benchmarks/results/2026-11-27-h200.json $OUT/ ;;
esac
bash scripts/gpu_check.sh --no-tests --bench --budget 120 -- --workloads prefill_causal_b4_t4096_h16_d256 --device-span > /dev/null 2>&1
grep -E "interleaved:|^## " $OUT/bench.log | cut -c1-200
rm -f $OUT/*.png $OUT/gpu_tests.log
