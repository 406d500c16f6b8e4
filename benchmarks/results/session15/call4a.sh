# Session 15, device call 4a (an H100; code 8323eb3): the tile index written by st.async
# into q_full's transaction: the float8 GPU suite, compute-sanitizer racecheck and memcheck
# on every small case (3 prefill, 2 decode) and racecheck on a D128 call that reuses Q
# slots, and the JIT build check (first build < 60 s, 0 compiles in a second process).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 220 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:0 racecheck:1 racecheck:2 racecheck:3 racecheck:4 memcheck:0 memcheck:1 memcheck:2 memcheck:3 memcheck:4; do
  tool=${job%:*}; case=${job#*:}
  timeout 60 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case >> $OUT/sanitizer.log 2>&1
  echo "$job rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer.log | tail -1)"
done
timeout 90 "$CS" --tool racecheck --kernel-name kns=jattn python3 benchmarks/results/session14/sanitize_reuse.py 128 1100 16 > $OUT/racecheck_reuse.log 2>&1
echo "reuse rc=$? $(grep -E 'tiles|RACECHECK SUMMARY' $OUT/racecheck_reuse.log | tr '\n' ' ' | cut -c1-200)"
JATTN_CACHE_DIR=$PWD/.jattn-cache-fresh timeout 120 python3 -m benchmarks.fp8_probe --build-check > $OUT/build_check.log 2>&1; echo "build-check rc=$?"; tail -3 $OUT/build_check.log | cut -c1-300
