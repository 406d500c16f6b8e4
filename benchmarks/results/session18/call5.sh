# Session 18, device call 5 (an H100): harness run of the forward kernel's workloads under
# this session's defaults (split refill, no reduction scratch, D64 256-key tiles): the
# block-sparse, causal, window, non-causal, append and backward rows, merged into the day's
# H100 file.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/
W=block_sparse_t8192_h32_d128_b64_density0.1,block_sparse_t8192_h32_d128_b64_density0.3,block_sparse_t8192_h32_d128_b64_density0.5,prefill_causal_b4_t4096_h32_d64,prefill_causal_b4_t4096_h32_d128,prefill_causal_b1_t8192_h32_d128,prefill_causal_gqa32x8_b4_t4096_d128,prefill_causal_b4_t4096_h16_d256,prefill_window1024_b1_t8192_h32_d128,prefill_noncausal_b4_t4096_h32_d128,append_b8_q256_kv4096_gqa32x8,attention_bwd_causal_b4_t4096_h32_d128
bash scripts/gpu_check.sh --no-tests --bench --budget 420 -- --workloads $W --device-span > /dev/null 2>&1
grep -E "^\| \`(block|prefill|append|attention)" $OUT/*.md | cut -c1-220
rm -f $OUT/*.png $OUT/gpu_tests.log
