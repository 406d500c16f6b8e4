# Session 11, device call 2 (H100): the float8 GPU tests and sanitizers on the new default
# (row sums from the tensor cores, PDL launch), the probe (PDL off as a variant, 5 rounds),
# then the harness's float8 prefill twin with its bf16 twin, merged into today's results.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
mkdir -p $OUT/t
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
from benchmarks import fp8_probe as p
arch = "sm_90a"; d = build.prefill_kernel(128, True, arch)
ks = build.default_kernels(arch) + [p.variant(d, ex) for ex in p.PREFILL_VARIANTS]
ks += [build.prefill_kernel(dd, c, arch, wgmma=False) for dd in (64, 128) for c in (False, True)]
t0 = time.perf_counter(); build.build_many([(k, arch) for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
export XLA_PYTHON_CLIENT_PREALLOCATE=false
(timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/t/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/t/pytest.log) &
for job in memcheck:0 racecheck:0 memcheck:2; do tool=${job%:*}; c=${job#*:}
  (timeout 150 $CS --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $c > $OUT/t/san_$tool$c.log 2>&1; echo "$tool $c rc=$?" >> $OUT/t/san_$tool$c.log) &
done
wait
tail -3 $OUT/t/pytest.log
grep -hE "ERROR SUMMARY|Hazard|rc=" $OUT/t/san_*.log; cat $OUT/t/san_*.log > $OUT/t/sanitizers.log; rm $OUT/t/san_*.log
export XLA_PYTHON_CLIENT_PREALLOCATE=true
timeout 200 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT/t > $OUT/t/probe.log 2>&1
grep -E "prefill .*rounds|rel_err|failed|speed" $OUT/t/probe.log | cut -c1-150
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 280 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 > /dev/null 2>&1
grep -E "prefill_causal|run id|fp8" $OUT/bench.log | tail -14
rm -f $OUT/*.png $OUT/gpu_tests.log
ls $OUT $OUT/t
