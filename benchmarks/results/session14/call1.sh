# Session 14, device call 1: lazy O rescale in the float8 prefill (default P_BIAS=5.75,
# RESCALE_TAU=3): float8 GPU tests, device-clock spans of the variants, then the probe's
# 5 interleaved rounds (with cuDNN and jattn bf16).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
timeout 150 python3 benchmarks/results/session14/span.py $OUT 3 P_BIAS=8.f:RESCALE_TAU=0.f,default,P_BIAS=8.f:RESCALE_TAU=0.75f,P_BIAS=6.75f:RESCALE_TAU=2.f,P_BIAS=4.75f:RESCALE_TAU=4.f > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 200 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1; echo "probe rc=$?"
grep -E "^\[.*prefill [a-z]|rel_err" $OUT/probe.log | grep -v " r0 " | cut -c1-200
