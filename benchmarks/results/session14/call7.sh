# Session 14, device call 7: the p offset on long rows: accuracy.py --wide (T = S = 8192,
# q x 2 / x 3) for (8, 0), the default (6, 2.75), (5, 3.75), (4, 4.75) and FlashAttention-3's
# arithmetic (0, 0); then device-clock spans of the same builds, 5 interleaved rounds.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=P_BIAS=8.0f:RESCALE_TAU=0.0f,default,P_BIAS=5.0f:RESCALE_TAU=3.75f,P_BIAS=4.0f:RESCALE_TAU=4.75f,P_BIAS=0.f:RESCALE_TAU=0.f
timeout 120 python3 benchmarks/results/session14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 240 python3 benchmarks/results/session14/accuracy.py $OUT $V --wide > $OUT/accuracy_wide.log 2>&1; echo "accuracy rc=$?"
grep -v Warn $OUT/accuracy_wide.log | cut -c1-140 | tail -30
timeout 150 python3 benchmarks/results/session14/span.py $OUT 5 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
