# Session 13, device call 1: decode GPU tests on the trimmed grid / constant inputs, then
# `idle_ctas.py` (new vs padded grid vs old constants, with cuDNN and tokamax triton).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 -m pytest tests/test_decode_pallas.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
PYTHONPATH=.:$site timeout 330 python3 benchmarks/results/session13/idle_ctas.py $OUT > $OUT/idle_ctas.log 2>&1; echo "probe rc=$?"
grep -v "^\[.*r0 " $OUT/idle_ctas.log | grep -v Warning | cut -c1-260 | tail -24
