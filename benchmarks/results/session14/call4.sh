# Session 14, device call 4: integer p offsets (call 3: a fractional offset puts the row
# max's p = 2^bias between e4m3 values, +30-60 % error): accuracy and device-clock spans of
# (8, 0), (6, 2.75), (5, 3.75), (4, 4.75).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=P_BIAS=8.0f:RESCALE_TAU=0.0f,P_BIAS=6.0f:RESCALE_TAU=2.75f,P_BIAS=5.0f:RESCALE_TAU=3.75f,P_BIAS=4.0f:RESCALE_TAU=4.75f
timeout 120 python3 benchmarks/results/session14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 200 python3 benchmarks/results/session14/accuracy.py $OUT $V > $OUT/accuracy.log 2>&1; echo "accuracy rc=$?"
grep -v Warn $OUT/accuracy.log | cut -c1-140 | tail -60
timeout 120 python3 benchmarks/results/session14/span.py $OUT 3 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
