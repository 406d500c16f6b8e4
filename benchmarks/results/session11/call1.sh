set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
python3 - <<'PY' 2>&1 | tail -2
import time
from jattn.ffi import build
from benchmarks import fp8_probe as p
arch = "sm_90a"; d = build.prefill_kernel(128, True, arch)
ks = [d] + [p.variant(d, ex) for ex in p.PREFILL_VARIANTS]
t0 = time.perf_counter(); build.build_many([(k, arch) for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
timeout 300 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1
grep -E "prefill .*rounds|rel_err|failed" $OUT/probe.log | cut -c1-160
grep -A12 "| what" $OUT/probe.log | head -14
sed -i 's/#define JATTN_PREFILL_LSUM_MMA 0/#define JATTN_PREFILL_LSUM_MMA 1/' csrc/prefill_fp8.cuh
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
ks = [build.prefill_kernel(dd, c, "sm_90a") for dd in (64, 128, 256) for c in (False, True)]
ks += [build.prefill_kernel(dd, c, "sm_90a", wgmma=False) for dd in (64, 128) for c in (False, True)]
t0 = time.perf_counter(); build.build_many([(k, "sm_90a") for k in ks])
print(f"LSUM default: {len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -k prefill -p no:cacheprovider > $OUT/pytest_lsum.log 2>&1; echo "pytest rc=$?"
tail -4 $OUT/pytest_lsum.log
