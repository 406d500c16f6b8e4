# Session 11, device calls 3 and 4 (H100; outputs call3_*, call4_*): the float8 prefill
# probe, 5 interleaved rounds, with the schedule knobs of fp8_probe.PREFILL_VARIANTS at that
# commit next to the default (call 3: PIN_ARRIVE 1/2, RESCALE_TAU_X100 75, both; call 4:
# PIN_ARRIVE 3 alone and with RESCALE_TAU_X100 75 and 40).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
from benchmarks import fp8_probe as p
arch = "sm_90a"; d = build.prefill_kernel(128, True, arch)
ks = [d] + [p.variant(d, ex) for ex in p.PREFILL_VARIANTS]
t0 = time.perf_counter(); build.build_many([(k, arch) for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
timeout 400 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1
grep -E "prefill .*rounds|rel_err|failed|speed" $OUT/probe.log | cut -c1-170
