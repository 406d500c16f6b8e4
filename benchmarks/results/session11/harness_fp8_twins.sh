# Session 11, device calls 10-12 (outputs call10_* .. call12_*, harness runs 8aa93b6d,
# e519b2ab, 213ecabb): the final code's float8 GPU tests, then the harness's float8
# twins with their bf16 twins (prefill B4 T4096 D128 causal, decode B32 S4096 pages of
# 16), merged into today's results file for the card.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
mkdir -p $OUT/t
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
arch = "sm_90a"
ks = build.default_kernels(arch)
ks += [build.prefill_kernel(dd, c, arch, wgmma=False) for dd in (64, 128) for c in (False, True)]
t0 = time.perf_counter(); build.build_many([(k, arch) for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/t/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/t/pytest.log
tail -3 $OUT/t/pytest.log
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 330 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128,decode_gqa32x8_b32_s4096_d128_p16_fp8,decode_gqa32x8_b32_s4096_d128_p16 > /dev/null 2>&1
grep -E "^## |jattn|cudnn|tokamax|run id|copy" $OUT/bench.log | cut -c1-150 | tail -40
grep -E "_fp8\`" $OUT/*.md | tail -3
rm -f $OUT/*.png $OUT/gpu_tests.log
