#!/usr/bin/env bash
# One GPU call for the CUDA FP8 kernels (issue 6): prebuild the default kernels and the
# probe's variants, then in parallel the GPU tests, compute-sanitizer (one process per
# case: memcheck on the prefill D128 causal and both decodes, racecheck on the decodes)
# and the first-build/cache check; then timings alone; then Nsight Compute (full set) on
# one prefill and one decode call at the benchmark shapes when FP8_NCU=1 and ncu exists.
# FP8_SANITIZE overrides the sanitizer jobs ("tool:case ...").
# At most 8 files come back from $OUT (default ./fp8-out).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/fp8-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=. JATTN_CACHE_DIR="${JATTN_CACHE_DIR:-$PWD/.jattn-cache}"
PY="${PYTHON:-python3}"
nvcc --version | tail -2
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
timeout 60 $PY - <<'EOF' 2>&1 | tail -3
import time
from jattn.ffi import build
from benchmarks import fp8_probe as p
arch = "sm_90a"
ks = build.default_kernels(arch)
ks += [p.variant(build.prefill_kernel(128, True, arch), ex) for ex in p.PREFILL_VARIANTS]
ks += [p.variant(build.decode_kernel(128, 4), ex) for ex in p.DECODE_VARIANTS]
t0 = time.perf_counter()
build.build_many([(k, arch) for k in ks])
print(f"{len(ks)} kernels, {build.stats['compiles']} compiled in {time.perf_counter() - t0:.1f} s")
EOF
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "compute-sanitizer: ${CS:-missing}; ncu: ${NCU:-missing}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
(timeout 170 $PY -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider >"$OUT/pytest.log" 2>&1
 echo "pytest rc=$?" >>"$OUT/pytest.log") &
mkdir -p "$OUT/sanitizer"
for job in ${FP8_SANITIZE:-memcheck:0 memcheck:3 memcheck:4 racecheck:3 racecheck:4}; do
  tool=${job%:*}; case=${job#*:}
  (timeout 80 "$CS" --tool $tool --kernel-name kns=jattn $PY -m benchmarks.fp8_probe \
     --sanitize $case >"$OUT/sanitizer/$tool$case.log" 2>&1
   echo "$tool case $case rc=$?" >>"$OUT/sanitizer/$tool$case.log") &
done
(timeout 80 $PY -m benchmarks.fp8_probe --build-check >"$OUT/build.log" 2>&1) &
wait
for f in pytest build; do echo "== $f"; grep -vE "^\s*$" "$OUT/$f.log" | tail -8; done
echo "== sanitizers"
grep -hE "sanitize|ERROR SUMMARY|Hazard|rc=" "$OUT"/sanitizer/*.log
cat "$OUT"/sanitizer/*.log > "$OUT/sanitizers.log"; rm -r "$OUT/sanitizer"
export XLA_PYTHON_CLIENT_PREALLOCATE=true
timeout 75 $PY -m benchmarks.fp8_probe --out "$OUT" 2>&1 | tee "$OUT/probe.log"
if [ -n "${NCU:-}" ] && [ "${FP8_NCU:-0}" = 1 ]; then
  for what in decode prefill; do  # within ~235 s for the whole script
    left=$((232 - SECONDS)); [ $left -lt 25 ] && { echo "ncu $what skipped (time)"; continue; }
    timeout $left "$NCU" --set full -k regex:${what}_fp8 --launch-skip 1 --launch-count 1 \
      $PY -m benchmarks.fp8_probe --ncu $what >"$OUT/ncu_$what.log" 2>&1
    echo "ncu $what rc=$?" >>"$OUT/ncu_$what.log"
    grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|rc=" "$OUT/ncu_$what.log" | head -14
  done
fi
