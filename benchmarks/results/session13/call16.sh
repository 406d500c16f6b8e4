# Session 13, device call 16: compute-sanitizer on the cases call 11 did not cover:
# racecheck and memcheck on the D64 prefill (64-byte swizzle in the transpose) and
# racecheck on D256, and both tools on the two CUDA float8 decodes (the TMA decode had no
# racecheck result: the sanitizer process segfaulted in session 7). One process per job,
# in parallel.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
python3 -c "
from jattn.ffi import build
build.build_many([(k, 'sm_90a') for k in build.default_kernels('sm_90a')])" 2>&1 | tail -1
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:1 memcheck:1 racecheck:2 racecheck:3 memcheck:3 racecheck:4 memcheck:4; do
  tool=${job%:*}; case=${job#*:}
  (timeout 200 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case > $OUT/sanitizer_$tool$case.log 2>&1
   echo "rc=$?" >> $OUT/sanitizer_$tool$case.log) &
done
wait
for f in $OUT/sanitizer_*.log; do echo "$(basename $f): $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $f | tail -1) $(grep -E 'sanitize|rel err' $f | tail -2 | tr '\n' ' ' | cut -c1-160) $(tail -1 $f)"; done
