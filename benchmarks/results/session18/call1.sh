# Session 18, device call 1: split_probe.py (the producer's K and V refills waited for
# separately, `prefill.SPLIT_REFILL`, against the old joint wait): block-sparse and the
# dense non-causal row first, then the five causal shapes with cuDNN and tokamax mosaic.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
timeout 250 python3 benchmarks/results/session18/split_probe.py $OUT sparse 5 > $OUT/split_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/split_probe_sparse.log | grep -v Warning | cut -c1-200 | tail -12
PYTHONPATH=.:$site timeout 320 python3 benchmarks/results/session18/split_probe.py $OUT causal 3 > $OUT/split_probe_causal.log 2>&1; echo "causal rc=$?"
grep -v "r0 " $OUT/split_probe_causal.log | grep -v Warning | cut -c1-200 | tail -26
