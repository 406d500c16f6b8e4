# Session 19, device call 3: the compiled forward's tests with the named-barrier signals
# (prefill, block-sparse, and test_ops' attention / prefill cases).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 540 python3 -m pytest tests/test_prefill_pallas.py tests/test_block_sparse.py "tests/test_ops.py" -k "not decode and not merge and not append_kv and not float8_append" -q -p no:cacheprovider -x > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -4 $OUT/pytest.log
