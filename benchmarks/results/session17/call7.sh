# Session 17, device call 7: compiled prefill tests with ROTATED on (the default), then
# rotate_probe.py (rotated vs base vs cuDNN vs tokamax mosaic on the five causal shapes).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
# (the compiled prefill tests passed in the first attempt of this call: call7_pytest.log)
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
PYTHONPATH=.:$site timeout 300 python3 benchmarks/results/session17/rotate_probe.py $OUT 5 > $OUT/rotate_probe.log 2>&1; echo "probe rc=$?"
grep -v "r0 " $OUT/rotate_probe.log | grep -v Warning | cut -c1-200 | tail -34
