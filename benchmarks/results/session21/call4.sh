# Session 21, device call 4: prefill.LAZY_RESCALE (the running max kept unless a row's grows by more
# than 8 (log2); O rescaled only in warps where one did, behind a vote): its SASS
# (is the branch there?), then flag_probe on block-sparse and the five causal shapes.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
F=jattn.pallas.prefill.LAZY_RESCALE
mkdir -p /tmp/dump
JATTN_SASS_FLAGS=$F timeout 120 python3 -m benchmarks.sass_dump /tmp/dump causal_d128 sparse_0.1 causal_d256 2>&1 | tee $OUT/sass_dump_lazy.log
(cd /tmp && tar czf $OUT/dumps_lazy.tar.gz dump)
timeout 150 python3 -m benchmarks.flag_probe $OUT $F sparse 5 > $OUT/flag_probe_sparse.log 2>&1; echo "sparse rc=$?"
grep -v "r0 " $OUT/flag_probe_sparse.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -8
grep "bitwise" $OUT/flag_probe_sparse.log | cut -c1-140 | head -8
PYTHONPATH=.:$site timeout 280 python3 -m benchmarks.flag_probe $OUT $F causal 4 > $OUT/flag_probe_causal.log 2>&1; echo "causal rc=$?"
grep -v "r0 " $OUT/flag_probe_causal.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -20
grep "bitwise: False" $OUT/flag_probe_causal.log | head -3
