# Session 15, device call 6 (an H100): the softmax's max chains started from the first
# values and the -inf guard only where a block is masked (SOFTMAX_TRIM, -12 instructions a
# block) against the code before (SOFTMAX_TRIM=0): spans; the call's timeline with scales
# as program constants against a broadcast scale; float8 prefill tests.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
S14=benchmarks/results/session14
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=SOFTMAX_TRIM=0,default
timeout 150 python3 $S14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 90 python3 $S14/span.py $OUT 9 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 90 python3 benchmarks/results/session15/timeline.py > $OUT/timeline.log 2>&1; echo "timeline rc=$?"; grep -v "^WARNING\|^I0\|^W0" $OUT/timeline.log | cut -c1-120 | head -40
timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider -k prefill > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
