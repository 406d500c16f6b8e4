# Session 14, device call 10: attention sinks (one key `gap` nats above 8191 others,
# first or last in the kernel's visiting order): accuracy of the default (6, 2.75), the
# eager (8, 0), (4, 4.75) and FlashAttention-3's arithmetic (0, 0).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=default,P_BIAS=8.0f:RESCALE_TAU=0.0f,P_BIAS=4.0f:RESCALE_TAU=4.75f,P_BIAS=0.f:RESCALE_TAU=0.f
timeout 120 python3 benchmarks/results/session14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 200 python3 benchmarks/results/session14/accuracy.py $OUT $V --sink > $OUT/accuracy_sink.log 2>&1; echo "accuracy rc=$?"
grep -v Warn $OUT/accuracy_sink.log | cut -c1-140 | tail -34
