# Session 22, device call 3: the block-sparse kernel with its consumers' lists cut to
# zero (the producer loads every tile, the consumers run the barrier protocol only), at
# densities 0.1 / 0.5 / 1.0, beside the kernel and dense; 5 interleaved rounds.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python3 benchmarks/results/session22/loads_only_probe.py $OUT > $OUT/loads_only_probe.log 2>&1; echo "rc=$?"
grep -v "r0 " $OUT/loads_only_probe.log | grep -v Warning | cut -c1-220 | tail -12
