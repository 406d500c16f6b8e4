# Session 16, device call 4 (an H100): the two sanitizer cases that crashed on the host
# in call 3 (up to three tries each), and a fifth harness run of the float8 prefill twin.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:0 memcheck:2; do
  tool=${job%:*}; case=${job#*:}
  for try in 1 2 3; do
    timeout 60 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case > $OUT/sanitizer_${tool}_$case.log 2>&1
    rc=$?; echo "$job try $try rc=$rc $(grep -E 'rel err|ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer_${tool}_$case.log | tr '\n' ' ' | cut -c1-160)"
    [ $rc -eq 0 ] && break
  done
done
cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/
bash scripts/gpu_check.sh --no-tests --bench --budget 150 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
cp $OUT/bench.log $OUT/bench_run1.log
grep -E "^  (jattn.attention|cudnn|tokamax.mosaic)|device clock: span" $OUT/bench.log | grep -v unavailable | cut -c1-110 | head -8
grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/bench.log
