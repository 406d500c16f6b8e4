# Session 18, device call 4: the compiled prefill and block-sparse tests under this
# session's defaults (split refill, no reduction scratch, D64 256-key tiles), then
# config_probe.py's d256 group (persistent vs one CTA per tile, beside the peers).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
timeout 330 python3 -m pytest tests/test_prefill_pallas.py tests/test_block_sparse.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -4 $OUT/pytest.log
PYTHONPATH=.:$site timeout 180 python3 benchmarks/results/session18/config_probe.py $OUT d256 5 > $OUT/config_probe_d256.log 2>&1; echo "d256 rc=$?"
grep -v "r0 " $OUT/config_probe_d256.log | grep -v Warning | cut -c1-200 | tail -6
