# Session 21, device call 9 (leads for the next session): with lazy rescaling in, the early
# Q.K^T at head dim 128 (`cfg:early_qk`), and lazy rescaling at D64 on top of its pinned
# softmax (`cfg:lazy_rescale`), each against the defaults, beside the peers.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
site=/tmp/jattn-bench-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl 2>&1 | tail -2
PYTHONPATH=.:$site timeout 170 python3 -m benchmarks.flag_probe $OUT cfg:early_qk causal:128 3 > $OUT/flag_probe_early.log 2>&1; echo "early rc=$?"
grep -v "r0 " $OUT/flag_probe_early.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -12
mv $OUT/flag_probe_causal.json $OUT/flag_probe_early.json
PYTHONPATH=.:$site timeout 100 python3 -m benchmarks.flag_probe $OUT cfg:lazy_rescale causal:64 3 > $OUT/flag_probe_lazy64.log 2>&1; echo "lazy64 rc=$?"
grep -v "r0 " $OUT/flag_probe_lazy64.log | grep -v Warning | grep -v "bitwise" | cut -c1-150 | tail -4
mv $OUT/flag_probe_causal.json $OUT/flag_probe_lazy64.json
