# Session 12, device call 13: the plan's wave chooser (waves=None) against 1 and 4 (plan_waves.py 13).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 400 python3 benchmarks/results/session12/plan_waves.py $OUT 13 > $OUT/plan_waves13.log 2>&1
echo "rc=$?"
grep -v " r0 " $OUT/plan_waves13.log | grep "ms " | cut -c12-200
