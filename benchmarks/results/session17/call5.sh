# Session 17, device call 5: decode GPU tests with the new defaults (early K refill, P from
# registers): table_probe.py (shuffled pages vs the identity table)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 360 python3 benchmarks/results/session17/table_probe.py $OUT > $OUT/table_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/table_probe.log | grep -v Warning | cut -c1-220 | tail -24
