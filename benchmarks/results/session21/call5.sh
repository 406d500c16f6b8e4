# Session 21, device call 5: the compiled forward tests with the new defaults
# (Config.lazy_rescale at Dv > 64: the vote and branch run only compiled; pin_softmax with
# 256-key tiles: the volatile load runs only compiled).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 540 python3 -m pytest tests/test_prefill_pallas.py tests/test_block_sparse.py "tests/test_ops.py" -k "not decode and not merge and not append_kv and not float8_append" -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -6 $OUT/pytest.log
