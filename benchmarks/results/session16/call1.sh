# Session 16, device call 1 (an H100): the fused tile boundary and the lazy rescale
# factors (FUSED_BOUNDARY, LAZY_ALPHA) against session 15's flow: spans by the device
# clock; the float8 GPU suite; racecheck and memcheck on the small prefill cases and on
# Q-slot reuse.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
S14=benchmarks/results/session14
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=FUSED_BOUNDARY=0:LAZY_ALPHA=0,LAZY_ALPHA=0,FUSED_BOUNDARY=0,default
timeout 150 python3 $S14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 150 python3 $S14/span.py $OUT 9 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 220 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:0 racecheck:1 racecheck:2 memcheck:0 memcheck:1 memcheck:2; do
  tool=${job%:*}; case=${job#*:}
  timeout 60 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case >> $OUT/sanitizer.log 2>&1
  echo "$job rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer.log | tail -1)"
done
timeout 90 "$CS" --tool racecheck --kernel-name kns=jattn python3 $S14/sanitize_reuse.py 128 1100 16 > $OUT/racecheck_reuse.log 2>&1
echo "reuse rc=$? $(grep -E 'tiles|RACECHECK SUMMARY' $OUT/racecheck_reuse.log | tr '\n' ' ' | cut -c1-200)"
gzip -f $OUT/sanitizer.log
