# Session 17, device call 4: decode GPU tests with the new defaults (early K refill, P from
# registers), then refill_probe.py (each change against the old code, cuDNN beside).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest tests/test_decode_pallas.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
timeout 360 python3 benchmarks/results/session17/refill_probe.py $OUT > $OUT/refill_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/refill_probe.log | grep -v Warning | cut -c1-220 | tail -24
