# Session 12, device call 7: every probe row (float8/bf16 prefill and decode) timed four
# ways (bench's 25 ms repetitions, <= 20 calls, 1.4 s sustained, device span after a pause)
# with nvidia-smi sampling SM clock and power every 100 ms (read only).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv,noheader
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
timeout 420 python3 -m benchmarks.fp8_probe --rounds 3 --timing-check --out $OUT > $OUT/probe.log 2>&1
echo "probe rc=$?"
kill $SMI
grep -E "(prefill|decode) [a-z_0-9]+ +[0-9.]+ (us|ms) |timing check|failed" $OUT/probe.log | grep -v " r0 " | cut -c1-420
