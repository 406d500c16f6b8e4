# Session 20, device call 5: flag_probe.py on prefill.OVERLAP_PV (the softmax of S_j under
# P_{j-1} V_{j-1}): block-sparse + dense non-causal, the causal shapes beside cuDNN and
# tokamax mosaic; then the compiled prefill and block-sparse tests with it on.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
F=jattn.pallas.prefill.OVERLAP_PV
timeout 120 python3 -m benchmarks.flag_probe $OUT $F sparse 4 > $OUT/flag_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/flag_probe_sparse.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -8
grep "bitwise" $OUT/flag_probe_sparse.log | cut -c1-140 | head -8
PYTHONPATH=.:$site timeout 170 python3 -m benchmarks.flag_probe $OUT $F causal 3 > $OUT/flag_probe_causal.log 2>&1; echo "causal rc=$?"
grep -v "r0 " $OUT/flag_probe_causal.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -20
grep "bitwise: False" $OUT/flag_probe_causal.log | head -3
timeout 190 python3 -m pytest tests/test_prefill_pallas.py tests/test_block_sparse.py -q -p no:cacheprovider -x > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
