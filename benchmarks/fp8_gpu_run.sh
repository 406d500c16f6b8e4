#!/usr/bin/env bash
# One GPU call for the CUDA FP8 kernels (issue 6): prebuild (cache carried in
# .jattn-cache when present), then in parallel the GPU tests, compute-sanitizer memcheck
# and racecheck on small shapes and the first-build/cache check; then timings alone.
# Logs go to $OUT (default ./fp8-out).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/fp8-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=. JATTN_CACHE_DIR="${JATTN_CACHE_DIR:-$PWD/.jattn-cache}"
PY="${PYTHON:-python3}"
nvcc --version | tail -2
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
timeout 150 $PY -m jattn.ffi.build --arch sm_90a 2>&1 | tail -2
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "compute-sanitizer: ${CS:-missing}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
(timeout 200 $PY -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider >"$OUT/pytest.log" 2>&1
 echo "pytest rc=$?" >>"$OUT/pytest.log") &
mkdir -p "$OUT/sanitizer"
for tool in memcheck racecheck; do
  for case in 0 1 2 3 4; do
    (timeout 200 "$CS" --tool $tool --kernel-name kns=jattn $PY -m benchmarks.fp8_probe \
       --sanitize $case >"$OUT/sanitizer/$tool$case.log" 2>&1
     echo "$tool case $case rc=$?" >>"$OUT/sanitizer/$tool$case.log") &
  done
done
(timeout 120 $PY -m benchmarks.fp8_probe --build-check >"$OUT/build.log" 2>&1) &
wait
for f in pytest build; do echo "== $f"; grep -vE "^\s*$" "$OUT/$f.log" | tail -12; done
echo "== sanitizers"
grep -hE "sanitize|ERROR SUMMARY|rc=" "$OUT"/sanitizer/*.log
cat "$OUT"/sanitizer/*.log > "$OUT/sanitizers.log"; rm -r "$OUT/sanitizer"
export XLA_PYTHON_CLIENT_PREALLOCATE=true
timeout 240 $PY -m benchmarks.fp8_probe --out "$OUT" 2>&1 | tee "$OUT/probe.log"
