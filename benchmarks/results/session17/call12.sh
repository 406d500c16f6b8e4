# Session 17, device call 12: ldg_probe.py (K and V through registers, 16 bytes a thread)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 300 python3 benchmarks/results/session17/ldg_probe.py $OUT > $OUT/ldg_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/ldg_probe.log | grep -v Warning | cut -c1-220 | tail -16
