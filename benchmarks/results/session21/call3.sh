# Session 21, device call 3: is the density-0.1 block-sparse step bound by the bytes it
# loads? The same FLOPs and steps with half the bytes (128-row blocks: both consumers of
# a CTA read one shared tile per step), next to the 64-row layout and dense.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m benchmarks.block_sparse_probe --out $OUT --no-checks --rounds 7 --deadline 170 \
  --rows "dense jattn.attention[pallas],block_sparse density0.1 plan,block_sparse density0.1 plan pairs share,block_sparse density0.5 plan" \
  > $OUT/block_sparse_probe.log 2>&1; echo "rc=$?"
tail -8 $OUT/block_sparse_probe.log
