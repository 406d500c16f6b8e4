# Session 11, device call 15: the float8 decode with page ids fetched 3 stages ahead:
# decode GPU tests, then the probe's decode rows (5 rounds) against IDS_AHEAD=0 (the old
# producer), 6, and the direct path.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name --format=csv,noheader
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
from benchmarks import fp8_probe as p
ks = [build.decode_kernel(dd, g) for dd in (64, 128, 256) for g in (8, 16) if dd * (1 if g <= 8 else 2) <= 256]
ks += [p.variant(build.decode_kernel(128, 4), ex) for ex in p.DECODE_VARIANTS]
t0 = time.perf_counter(); build.build_many([(k, "sm_90a") for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 150 python3 -m pytest tests/test_fp8_gpu.py -q -k decode -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 100 $CS --tool memcheck --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize 3 > $OUT/memcheck3.log 2>&1; echo "memcheck 3 rc=$?" >> $OUT/memcheck3.log; grep -E "ERROR SUMMARY|rc=" $OUT/memcheck3.log
timeout 250 python3 -m benchmarks.fp8_probe --only decode --rounds 5 --out $OUT > $OUT/probe.log 2>&1
grep -E "decode [a-z_0-9]+ +[0-9.]+ us \(median|rel_err|failed|tokens/s|copy GB" $OUT/probe.log | cut -c1-150
