# Session 20, device call 2: flag_probe.py on prefill.EARLY_QK and LATE_ARRIVE (S_{j+1} issued behind
# P_j V_j) against the old step: block-sparse + dense non-causal, then the five causal
# shapes beside cuDNN and tokamax mosaic.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
F=jattn.pallas.prefill.EARLY_QK,jattn.pallas.prefill.LATE_ARRIVE
timeout 170 python3 -m benchmarks.flag_probe $OUT $F sparse 4 > $OUT/flag_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/flag_probe_sparse.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -20
grep "bitwise: False" $OUT/flag_probe_sparse.log | head -3
PYTHONPATH=.:$site timeout 320 python3 -m benchmarks.flag_probe $OUT $F causal 3 > $OUT/flag_probe_causal.log 2>&1; echo "causal rc=$?"
grep -v "r0 " $OUT/flag_probe_causal.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -32
grep "bitwise: False" $OUT/flag_probe_causal.log | head -3
