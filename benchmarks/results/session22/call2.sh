# Session 22, device call 2: the density-0.1 ratio split into the 64-key step's cost and
# what sparsity adds: dense (128-key steps), dense with 64-key steps, the sparse kernel
# with every tile listed (density 1.0) and at 0.1 / 0.3 / 0.5, 5 interleaved rounds.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 280 python3 -m benchmarks.block_sparse_probe --out $OUT --no-checks --rounds 5 --deadline 250 \
  --rows "dense jattn.attention[pallas],dense pallas persistent block_kv=64,block_sparse density1.0 plan,block_sparse density0.1 plan,block_sparse density0.3 plan,block_sparse density0.5 plan" \
  > $OUT/block_sparse_probe.log 2>&1; echo "rc=$?"
tail -9 $OUT/block_sparse_probe.log
