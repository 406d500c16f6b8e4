# Session 17, device call 11: relayout_probe.py (whole-row copies swizzled in place)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 300 python3 benchmarks/results/session17/relayout_probe.py $OUT > $OUT/relayout_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/relayout_probe.log | grep -v Warning | cut -c1-220 | tail -16
