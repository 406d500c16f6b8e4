# Session 22, device call 4 (H200): session 17's table probe (the decode on shuffled
# pages and on the identity table, pages of 16 and 64, beside cuDNN), then call 3's
# loads-only probe of the block-sparse kernel.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python3 benchmarks/results/session17/table_probe.py $OUT > $OUT/table_probe.log 2>&1; echo "table rc=$?"
grep -v "r0 " $OUT/table_probe.log | grep -v Warning | cut -c1-200 | tail -10
timeout 240 python3 benchmarks/results/session22/loads_only_probe.py $OUT > $OUT/loads_only_probe.log 2>&1; echo "loads rc=$?"
grep -v "r0 " $OUT/loads_only_probe.log | grep -v Warning | cut -c1-200 | tail -7
