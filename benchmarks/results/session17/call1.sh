# Session 17, device call 1: layout_probe.py (is the bf16 decode's gap to cuDNN in its DRAM access pattern?)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
timeout 400 python3 benchmarks/results/session17/layout_probe.py $OUT > $OUT/layout_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/layout_probe.log | grep -v Warning | cut -c1-330 | tail -12
