# Session 12, device call 12: host decode plans with 1-6 waves (plan_waves.py).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 400 python3 benchmarks/results/session12/plan_waves.py $OUT > $OUT/plan_waves.log 2>&1
echo "rc=$?"
grep -v " r0 " $OUT/plan_waves.log | grep "ms " | cut -c12-200
