# Session 14, device call 3: accuracy.py again (call 2's unpacked the FFI call's four
# results into two), with (5.75, 0): the lower bias alone, without lazy rescaling.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=P_BIAS=8.0f:RESCALE_TAU=0.0f,P_BIAS=5.75f:RESCALE_TAU=0.0f,default,P_BIAS=4.75f:RESCALE_TAU=4.0f,P_BIAS=3.75f:RESCALE_TAU=5.0f
timeout 120 python3 benchmarks/results/session14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 200 python3 benchmarks/results/session14/accuracy.py $OUT $V > $OUT/accuracy.log 2>&1; echo "accuracy rc=$?"
grep -v Warn $OUT/accuracy.log | cut -c1-140 | tail -60
