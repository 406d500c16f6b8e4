# Session 19, device call 2: flag_probe.py on prefill.NAMED_TURN and prefill.NAMED_FREES
# (each alone and both, against mbarriers): the five causal shapes beside cuDNN and
# tokamax mosaic, then block-sparse and the dense non-causal row.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
F=jattn.pallas.prefill.NAMED_TURN,jattn.pallas.prefill.NAMED_FREES
PYTHONPATH=.:$site timeout 330 python3 -m benchmarks.flag_probe $OUT $F causal 4 > $OUT/flag_probe_causal.log 2>&1; echo "causal rc=$?"
grep -v "r0 " $OUT/flag_probe_causal.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -31
grep "bitwise: False" $OUT/flag_probe_causal.log | head -3
timeout 200 python3 -m benchmarks.flag_probe $OUT $F sparse 5 > $OUT/flag_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/flag_probe_sparse.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -16
grep "bitwise: False" $OUT/flag_probe_sparse.log | head -3
