# Session 14, device call 11 (an H100): the final float8 prefill: all float8 GPU tests (the
# sink and long-row tests new), then compute-sanitizer racecheck and memcheck on the D128
# causal prefill and racecheck on D256 causal.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 240 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:0 memcheck:0 racecheck:2; do
  tool=${job%:*}; case=${job#*:}
  timeout 100 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case > $OUT/sanitizer_$tool$case.log 2>&1
  echo "$job rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer_$tool$case.log | tail -1)"
done
