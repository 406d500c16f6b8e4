# Session 13, device call 10: the transpose's counts raised one unit late: float8 prefill
# GPU tests, device-clock spans (alone and in the call), then the probe's 5 interleaved
# rounds (default 16 transpose CTAs against 32 and 132, cuDNN and jattn bf16).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -x -p no:cacheprovider -k prefill > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
timeout 120 python3 benchmarks/results/session13/vt_span.py $OUT 16:VT_ONLY=1,16,32,132 > $OUT/vt_span.log 2>&1; echo "span rc=$?"
grep VT_CTAS $OUT/vt_span.log | cut -c1-200
timeout 240 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1; echo "probe rc=$?"
grep -E "^\[.*prefill [a-z]" $OUT/probe.log | grep -v " r0 " | cut -c1-200
