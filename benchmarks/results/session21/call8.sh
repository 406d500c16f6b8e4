# Session 21, device call 8: prefill.PREFETCH_LISTS (the block-sparse consumers read the
# next item's list header an item ahead): flag_probe on block-sparse, then the compiled
# block-sparse tests with it on.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
F=jattn.pallas.prefill.PREFETCH_LISTS
timeout 200 python3 -m benchmarks.flag_probe $OUT $F sparse 7 > $OUT/flag_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/flag_probe_sparse.log | grep -v Warning | grep -v "bitwise" | cut -c1-170 | tail -8
grep "bitwise" $OUT/flag_probe_sparse.log | cut -c1-140 | head -8
timeout 240 python3 -c "
import sys
import jattn.pallas.prefill as P; P.PREFETCH_LISTS = True
import pytest; sys.exit(pytest.main(['-q', 'tests/test_block_sparse.py', '-p', 'no:cacheprovider']))" > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -3 $OUT/pytest.log
