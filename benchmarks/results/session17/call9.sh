# Session 17, device call 9: swizzle_probe.py (does the TMA fetch granularity move the decode's DRAM rate?)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 300 python3 benchmarks/results/session17/swizzle_probe.py $OUT > $OUT/swizzle_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/swizzle_probe.log | grep -v Warning | cut -c1-220 | tail -16
