# Session 11, device calls 5-9 (H100), one per version of the in-kernel V^T transposers
# (commits 8c0083f..2a704b2; outputs call5_* .. call9_*): the float8 GPU tests and
# sanitizers on that version's default, then the probe (5 rounds) with the variants of
# fp8_probe.PREFILL_VARIANTS at that commit (TRANSPOSERS=0, the separate transpose kernel;
# 16; from call 6 also 4).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name --format=csv,noheader
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
from benchmarks import fp8_probe as p
arch = "sm_90a"; d = build.prefill_kernel(128, True, arch)
ks = [build.prefill_kernel(dd, c, arch) for dd in (64, 128, 256) for c in (False, True)]
ks += [p.variant(d, ex) for ex in p.PREFILL_VARIANTS]
ks += [build.prefill_kernel(dd, c, arch, wgmma=False) for dd in (64, 128) for c in (False, True)]
ks += [build.decode_kernel(dd, g) for dd in (64, 128, 256) for g in (8, 16) if dd * (1 if g <= 8 else 2) <= 256]
t0 = time.perf_counter(); build.build_many([(k, arch) for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
(timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -x -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log) &
for job in memcheck:0 racecheck:0 memcheck:1; do tool=${job%:*}; c=${job#*:}
  (timeout 150 $CS --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $c > $OUT/san_$tool$c.log 2>&1; echo "$tool $c rc=$?" >> $OUT/san_$tool$c.log) &
done
wait
tail -15 $OUT/pytest.log | grep -vE "^\s*$" | cut -c1-200
grep -hE "ERROR SUMMARY|Hazard|rc=" $OUT/san_*.log; cat $OUT/san_*.log > $OUT/sanitizers.log; rm $OUT/san_*.log
export XLA_PYTHON_CLIENT_PREALLOCATE=true
timeout 250 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1
grep -E "prefill .*rounds|rel_err|failed|speed" $OUT/probe.log | cut -c1-170
