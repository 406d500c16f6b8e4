# Session 12, device call 2: the decode rows and the copy timed three ways in one process
# (<= 20 calls a repetition as the harness does, <= 400 calls, the device's clock over 100
# calls): is the "fixed cost per call" the host timing's?
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 400 python3 -m benchmarks.fp8_probe --only decode --rounds 3 --timing-check --decode-shapes 32:2048:32:8 --out $OUT > $OUT/probe.log 2>&1
echo "probe rc=$?"
grep -E "decode [a-z_0-9]+ +[0-9.]+ us \(median|failed|timing check|tokens/s|copy GB" $OUT/probe.log | cut -c1-330
