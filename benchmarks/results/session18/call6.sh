# Session 18, device call 6: config_probe.py's d64 groups: the new 256-key head-dim-64
# default against the old 128-key one on four more shapes, causal and not, peers beside.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
for g in d64 d64-noncausal; do
PYTHONPATH=.:$site timeout 150 python3 benchmarks/results/session18/config_probe.py $OUT $g 3 > $OUT/config_probe_$g.log 2>&1; echo "$g rc=$?"
grep -v "r0 " $OUT/config_probe_$g.log | grep -v Warning | grep " ms " | cut -c1-130
done
