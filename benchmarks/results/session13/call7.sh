# Session 13, device call 7: the TMA-fed transpose on few CTAs: float8 GPU tests, then the
# device-clock spans for 8 / 16 / 32 / 132 transpose CTAs.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 300 python3 -m pytest tests/test_fp8_gpu.py -q -x -p no:cacheprovider -k prefill > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
timeout 200 python3 benchmarks/results/session13/vt_span.py $OUT ${1:-8,16,32,132} > $OUT/vt_span.log 2>&1; echo "span rc=$?"
grep VT_CTAS $OUT/vt_span.log | cut -c1-230; tail -3 $OUT/vt_span.log | grep -i error
