# Session 19, device call 1: flag_probe.py on prefill.NAMED_BARRIERS (the forward
# kernel's ping-pong and slot frees through named barriers vs mbarriers): the five causal
# shapes beside cuDNN and tokamax mosaic, then block-sparse and the dense non-causal row.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
F=jattn.pallas.prefill.NAMED_BARRIERS
PYTHONPATH=.:$site timeout 300 python3 -m benchmarks.flag_probe $OUT $F causal 5 > $OUT/flag_probe_causal.log 2>&1; echo "causal rc=$?"
grep -v "r0 " $OUT/flag_probe_causal.log | grep -v Warning | cut -c1-200 | tail -26
timeout 240 python3 -m benchmarks.flag_probe $OUT $F sparse 5 > $OUT/flag_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/flag_probe_sparse.log | grep -v Warning | cut -c1-200 | tail -14
