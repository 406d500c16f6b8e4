# Session 18, device call 2: split_probe.py's sparse group again (call 1's check compared
# the whole output with the reference's first 1024 rows and stopped the group), 7 rounds.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout 450 python3 benchmarks/results/session18/split_probe.py $OUT sparse 7 > $OUT/split_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/split_probe_sparse.log | grep -v Warning | cut -c1-200 | tail -14
