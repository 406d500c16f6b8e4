# Session 12, device call 1: the float8 decode launched as a programmatic dependent.
# Builds, the float8 GPU tests, the probe's decode rows at S 2048/4096/8192 (7 rounds,
# PDL off as a variant; the intercept is the fixed cost per call), then the harness's
# float8 decode twin beside its bf16 twin.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
from benchmarks import fp8_probe as p
arch = "sm_90a"
ks = build.default_kernels(arch)
ks += [p.variant(build.decode_kernel(128, 4), ex) for ex in p.DECODE_VARIANTS]
t0 = time.perf_counter(); build.build_many([(k, arch) for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
timeout 150 python3 -m benchmarks.fp8_probe --only decode --rounds 7 --decode-shapes 32:2048:32:8,32:8192:32:8 --out $OUT > $OUT/probe.log 2>&1
grep -E "decode [a-z_0-9]+ +[0-9.]+ us \(median|rel_err|failed|tokens/s|copy GB" $OUT/probe.log | cut -c1-150
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
timeout 200 bash scripts/gpu_check.sh --no-tests --bench --budget 150 -- --workloads decode_gqa32x8_b32_s4096_d128_p16_fp8,decode_gqa32x8_b32_s4096_d128_p16 > /dev/null 2>&1
grep -E "^## |jattn|cudnn|tokamax|run id|copy" $OUT/bench.log | cut -c1-150 | tail -20
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/*.md
