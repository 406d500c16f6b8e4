# Session 19, device call 4: harness run of the bf16 forward, append, backward, window
# and block-sparse workloads with the named-barrier signals (merged into the day's file
# of the card that comes).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
case "$GPU" in *H100*) cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/ ;; esac
W=block_sparse_t8192_h32_d128_b64_density0.1,block_sparse_t8192_h32_d128_b64_density0.3,block_sparse_t8192_h32_d128_b64_density0.5,prefill_causal_b4_t4096_h32_d64,prefill_causal_b4_t4096_h32_d128,prefill_causal_b1_t8192_h32_d128,prefill_causal_gqa32x8_b4_t4096_d128,prefill_causal_b4_t4096_h16_d256,prefill_window1024_b1_t8192_h32_d128,prefill_noncausal_b4_t4096_h32_d128,append_b8_q256_kv4096_gqa32x8,attention_bwd_causal_b4_t4096_h32_d128
bash scripts/gpu_check.sh --no-tests --bench --budget 440 -- --workloads $W --device-span > /dev/null 2>&1
grep -E "^\| \`(block|prefill|append|attention)" $OUT/*.md | cut -c1-220
rm -f $OUT/*.png $OUT/gpu_tests.log
