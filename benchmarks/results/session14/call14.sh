# Session 14, device call 14 (an H100): packed f16x2 exponentials (JATTN_EXP_F16=1, the
# default here) against the f32 path: device-clock spans, accuracy, float8 prefill tests.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=EXP_F16=0,default
timeout 100 python3 benchmarks/results/session14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 60 python3 benchmarks/results/session14/span.py $OUT 5 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 60 python3 benchmarks/results/session14/accuracy.py $OUT $V > $OUT/accuracy.log 2>&1; echo "accuracy rc=$?"
grep -v Warn $OUT/accuracy.log | cut -c1-140 | tail -24
timeout 150 python3 -m pytest tests/test_fp8_gpu.py -q -x -p no:cacheprovider -k prefill > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
