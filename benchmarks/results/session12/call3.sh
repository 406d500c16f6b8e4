# Session 12, device call 3 (and later calls, with other workloads): the harness under the
# new timing (<= 400 calls a repetition), merged into today's results file. Usage:
#   bash benchmarks/results/session12/call3.sh BUDGET_S WORKLOADS [EXTRA_HARNESS_ARGS]
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
python3 - <<'PY' 2>&1 | tail -1
import time
from jattn.ffi import build
ks = build.default_kernels("sm_90a")
t0 = time.perf_counter(); build.build_many([(k, "sm_90a") for k in ks])
print(f"{len(ks)} kernels in {time.perf_counter() - t0:.1f} s")
PY
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget "$1" -- --workloads "$2" ${3:-} > /dev/null 2>&1
grep -E "^## |jattn|cudnn|tokamax|run id|copy" $OUT/bench.log | cut -c1-150 | tail -60
grep -E "^\| \`" $OUT/*.md | cut -c1-400 | tail -20
rm -f $OUT/*.png $OUT/gpu_tests.log
