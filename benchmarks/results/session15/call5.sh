# Session 15, device call 5 (an H100): the session's final float8 code (call 4b's): two
# harness runs of the float8 prefill twin and one of the float8 decode twin, each with its
# bf16 twin (device clock too), merged into today's H100 results; then the sanitizer cases
# that crashed in call 4b.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/
for run in 1 2 3; do
W=prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128
[ $run = 3 ] && W=decode_gqa32x8_b32_s4096_d128_p16_fp8,decode_gqa32x8_b32_s4096_d128_p16
bash scripts/gpu_check.sh --no-tests --bench --budget 200 -- --workloads $W --device-span > /dev/null 2>&1
cp $OUT/bench.log $OUT/bench_run$run.log
grep -E "^## |^  (jattn.attention|jattn.decode|cudnn|tokamax.mosaic)|device clock: span" $OUT/bench.log | grep -v unavailable | cut -c1-160
grep -E "^\| \`(prefill_causal_b4_t4096_h32_d128|decode_gqa32x8_b32_s4096_d128_p16)" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
done
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/bench.log
# compute-sanitizer on the small cases that crashed before their first kernel in call 4b
# (the known host-side crash): up to three attempts each, one process per attempt.
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:1 memcheck:0 memcheck:4; do
  tool=${job%:*}; case=${job#*:}
  for attempt in 1 2 3; do
    timeout 60 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case > $OUT/sanitizer_$tool$case.log 2>&1
    rc=$?; s=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer_$tool$case.log | tail -1)
    echo "$job attempt $attempt rc=$rc $s"
    [ -n "$s" ] && break
  done
done
cat $OUT/sanitizer_*.log > $OUT/sanitizer.log; rm -f $OUT/sanitizer_*.log
