# Session 13, device call 11: the final float8 prefill (transpose on 16 CTAs beside the
# attention kernel): all float8 GPU tests, compute-sanitizer on the prefill (racecheck and
# memcheck, D128 causal; memcheck D256 causal), then the harness's float8 prefill twin and
# its bf16 twin with the device clock, merged into today's results.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:0 memcheck:0 memcheck:2; do
  tool=${job%:*}; case=${job#*:}
  timeout 90 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case > $OUT/sanitizer_$tool$case.log 2>&1
  echo "$tool case $case rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|hazard' $OUT/sanitizer_$tool$case.log | tail -1)"
done
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 250 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
grep -E "^## |^  (jattn|cudnn|tokamax)|device clock|run id" $OUT/bench.log | grep -v unavailable | cut -c1-200
grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
rm -f $OUT/*.png $OUT/gpu_tests.log
