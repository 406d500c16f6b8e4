# Session 17, device call 10: staged_probe.py (whole rows through the unswizzled staged ring)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 300 python3 benchmarks/results/session17/staged_probe.py $OUT > $OUT/staged_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/staged_probe.log | grep -v Warning | cut -c1-220 | tail -16
