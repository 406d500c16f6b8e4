# Session 22, device call 1: the decode tests compiled (with the whole-rows cases), then
# whole_rows_probe.py (whole 256-byte rows against the plain tiles and cuDNN).
# Runs at commit d6c97af only (the whole-rows path and its probe were removed after it).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 200 python3 -m pytest -q -x tests/test_decode_pallas.py > $OUT/pytest.log 2>&1; echo "pytest rc=$?"
tail -5 $OUT/pytest.log
timeout 330 python3 benchmarks/results/session22/whole_rows_probe.py $OUT > $OUT/whole_rows_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/whole_rows_probe.log | grep -v Warning | cut -c1-220 | tail -16
