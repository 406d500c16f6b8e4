# Session 16, device call 5 (an H100): how often the float8 prefill's two kernels fail to
# overlap (call 3's run 2): 20 device-clock rounds of 20 calls of the final build, the
# span against the sum of the kernels in each.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 200 python3 benchmarks/results/session14/span.py $OUT 20 default > $OUT/span.log 2>&1; echo "span rc=$?"
python3 - <<'PY'
import json, os
r = json.load(open(os.environ["OUT"] + "/span.json"))["results"]["default"]
for sp, k in zip(r["span_us"], r["by_kernel_us"]):
  print(f"span {sp:7.1f} us  kernels {sum(k.values()):7.1f} us  " + " ".join(f"{n[:22]} {v:.1f}" for n, v in k.items()))
PY
