# Session 18, device call 3: config_probe.py (rings that fit without the reduction
# scratch): block-sparse 2 vs 3 stages, then the causal shapes' configs beside the peers.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
timeout 200 python3 benchmarks/results/session18/config_probe.py $OUT sparse 7 > $OUT/config_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/config_probe_sparse.log | grep -v Warning | cut -c1-200 | tail -8
PYTHONPATH=.:$site timeout 340 python3 benchmarks/results/session18/config_probe.py $OUT causal 3 > $OUT/config_probe_causal.log 2>&1; echo "causal rc=$?"
grep -v "r0 " $OUT/config_probe_causal.log | grep -v Warning | cut -c1-200 | tail -24
