# Session 17, device call 2: order_probe.py (the decode CTAs' dispatch order)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 400 python3 benchmarks/results/session17/order_probe.py $OUT > $OUT/order_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/order_probe.log | grep -v Warning | cut -c1-250 | tail -12
