# Session 14, device call 8: row sums from zero every block (JATTN_L_FRESH=1, default)
# against the carried sum (L_FRESH=0): accuracy on long and T=1024 rows, spans, then the
# float8 GPU tests.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=default,L_FRESH=0,P_BIAS=8.0f:RESCALE_TAU=0.0f
timeout 120 python3 benchmarks/results/session14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 200 python3 benchmarks/results/session14/accuracy.py $OUT $V --wide > $OUT/accuracy_wide.log 2>&1; echo "accuracy wide rc=$?"
grep -v Warn $OUT/accuracy_wide.log | cut -c1-140 | tail -12
timeout 150 python3 benchmarks/results/session14/accuracy.py $OUT default,L_FRESH=0 > $OUT/accuracy.log 2>&1; echo "accuracy rc=$?"
grep -v Warn $OUT/accuracy.log | cut -c1-140 | tail -24
timeout 120 python3 benchmarks/results/session14/span.py $OUT 5 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 220 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
