# Session 16, device call 3 (an H100): the final float8 prefill (v_scale read at the
# tile's start): the float8 GPU suite, sanitizers on the small prefill cases and Q-slot
# reuse, the JIT build check, two more harness runs of the float8 prefill twin.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
S14=benchmarks/results/session14
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 220 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:0 racecheck:1 racecheck:2 memcheck:0 memcheck:1 memcheck:2; do
  tool=${job%:*}; case=${job#*:}
  timeout 60 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case >> $OUT/sanitizer.log 2>&1
  echo "$job rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer.log | tail -1)"
done
timeout 90 "$CS" --tool racecheck --kernel-name kns=jattn python3 $S14/sanitize_reuse.py 128 1100 16 > $OUT/racecheck_reuse.log 2>&1
echo "reuse rc=$? $(grep -E 'tiles|RACECHECK SUMMARY' $OUT/racecheck_reuse.log | tr '\n' ' ' | cut -c1-200)"
gzip -f $OUT/sanitizer.log
JATTN_CACHE_DIR=$PWD/.jattn-cache-fresh timeout 120 python3 -m benchmarks.fp8_probe --build-check > $OUT/build_check.log 2>&1; echo "build-check rc=$?"; tail -3 $OUT/build_check.log | cut -c1-300
cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/
for run in 1 2; do
bash scripts/gpu_check.sh --no-tests --bench --budget 150 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
cp $OUT/bench.log $OUT/bench_run$run.log
grep -E "^  (jattn.attention|cudnn|tokamax.mosaic)|device clock: span" $OUT/bench.log | grep -v unavailable | cut -c1-110 | head -8
grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
done
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/bench.log
