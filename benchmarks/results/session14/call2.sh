# Session 14, device call 2: lazy-rescale variants against the float64 oracle (accuracy.py),
# their device-clock spans, and the probe's 5 interleaved rounds with cuDNN and bf16 jattn.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=P_BIAS=8.0f:RESCALE_TAU=0.0f,default,P_BIAS=4.75f:RESCALE_TAU=4.0f,P_BIAS=3.75f:RESCALE_TAU=5.0f
timeout 120 python3 benchmarks/results/session14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 150 python3 benchmarks/results/session14/accuracy.py $OUT $V > $OUT/accuracy.log 2>&1; echo "accuracy rc=$?"
cut -c1-140 $OUT/accuracy.log | grep -v Warn | tail -50
timeout 120 python3 benchmarks/results/session14/span.py $OUT 3 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 200 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1; echo "probe rc=$?"
grep -E "^\[.*prefill [a-z]|rel_err" $OUT/probe.log | grep -v " r0 " | cut -c1-200
