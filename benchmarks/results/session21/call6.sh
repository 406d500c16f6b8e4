# Session 21, device call 6: harness run of the forward workloads (and fwd+bwd) with the
# lazy rescale and the pinned D64 softmax, interleaved closest pairs, merged into the
# day's file of the card.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
case "$GPU" in
  *H100*) cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/ ;;
  *H200*) cp benchmarks/results/2026-11-27-h200.json $OUT/ ;;
esac
W=block_sparse_t8192_h32_d128_b64_density0.1,block_sparse_t8192_h32_d128_b64_density0.3,block_sparse_t8192_h32_d128_b64_density0.5,prefill_causal_b4_t4096_h32_d64,prefill_causal_b4_t4096_h32_d128,prefill_causal_b1_t8192_h32_d128,prefill_causal_gqa32x8_b4_t4096_d128,prefill_causal_b4_t4096_h16_d256,prefill_window1024_b1_t8192_h32_d128,prefill_noncausal_b4_t4096_h32_d128,append_b8_q256_kv4096_gqa32x8,attention_bwd_causal_b4_t4096_h32_d128
bash scripts/gpu_check.sh --no-tests --bench --budget 470 -- --workloads $W --device-span > /dev/null 2>&1
grep -E "interleaved:|^## " $OUT/bench.log | cut -c1-200
rm -f $OUT/*.png $OUT/gpu_tests.log
