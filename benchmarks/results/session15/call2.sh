# Session 15, device call 2 (an H100): P.V and the row sums in one wgmma (PV_SUMS) and the
# transpose's counts raised two units at a time (VT_BATCH): spans (by kernel), accuracy
# against the float64 oracle, the whole float8 GPU suite.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
S14=benchmarks/results/session14
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=PV_SUMS=0:VT_BATCH=1,PV_SUMS=0,VT_BATCH=1,default,VT_BATCH=4
timeout 200 python3 $S14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 100 python3 $S14/span.py $OUT 7 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
python3 - <<'PY'
import json, os, numpy as np
r = json.load(open(os.environ["OUT"] + "/span.json"))["results"]
for k, v in r.items():
  ks = {}
  for d in v["by_kernel_us"]:
    for n, t in d.items(): ks.setdefault(n[:40], []).append(t)
  print(f"{k:28s}", " ".join(f"{n}: {np.median(t):.1f}" for n, t in ks.items()))
PY
timeout 100 python3 $S14/accuracy.py $OUT PV_SUMS=0,default > $OUT/accuracy.log 2>&1; echo "accuracy rc=$?"
grep -v Warn $OUT/accuracy.log | cut -c1-140 | tail -14
mkdir -p $OUT/w; timeout 100 python3 $S14/accuracy.py $OUT/w PV_SUMS=0,default --wide > $OUT/w/accuracy.log 2>&1; echo "wide rc=$?"
grep -v Warn $OUT/w/accuracy.log | cut -c1-140 | tail -10
timeout 220 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
