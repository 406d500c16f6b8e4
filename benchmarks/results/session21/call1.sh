# Session 21, device call 1: what ptxas made of the forward kernels (D64 / D128 / D256,
# with and without the early Q.K^T), the block-sparse kernel and the bf16 decode: PTX,
# ptxas report and SASS with control codes (benchmarks/sass_dump.py), packed in one file.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
which ptxas; ptxas --version | tail -1
mkdir -p /tmp/dump
timeout 500 python3 -m benchmarks.sass_dump /tmp/dump 2>&1 | tee $OUT/sass_dump.log
(cd /tmp && tar czf $OUT/dumps.tar.gz dump) && ls -la $OUT
