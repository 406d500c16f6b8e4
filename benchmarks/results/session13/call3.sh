# Session 13, device call 3: the float8 prefill with the V transpose on JATTN_VT_CTAS
# persistent CTAs beside the attention kernel: float8 GPU tests, then the probe (default
# 16 CTAs against 8, 32 and 1024) in 5 interleaved rounds.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 300 python3 -m pytest tests/test_fp8_gpu.py -q -x -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
timeout 240 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1; echo "probe rc=$?"
grep -E "^\[.*prefill [a-z]" $OUT/probe.log | grep -v " r0 " | cut -c1-200; grep -iE "err|fail" $OUT/probe.log | head -5
