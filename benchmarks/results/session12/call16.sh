# Session 12, device call 16: the whole GPU test suite at the final code (no benchmark).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 560 bash scripts/gpu_check.sh > $OUT/gpu_check.log 2>&1; echo "gpu_check rc=$?"
grep -E "passed|failed|error" $OUT/gpu_check.log | tail -15
