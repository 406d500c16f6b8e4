# Session 17, device call 3: fill_probe.py (B16/17/32/33: SM-bound or DRAM-bound?)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 300 python3 benchmarks/results/session17/fill_probe.py $OUT > $OUT/fill_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/fill_probe.log | grep -v Warning | cut -c1-200 | tail -10
