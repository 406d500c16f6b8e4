# Session 16, device call 6 (an H100): the scales staged in shared memory by the producer
# (SCALES_SMEM) against the consumers' own global reads: spans; prefill tests; racecheck
# on case 0 and on Q-slot reuse; two harness runs of the float8 prefill twin.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
S14=benchmarks/results/session14
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
V=SCALES_SMEM=0,default
timeout 150 python3 $S14/prebuild.py $V > $OUT/prebuild.log 2>&1; echo "prebuild rc=$?"
timeout 120 python3 $S14/span.py $OUT 9 $V > $OUT/span.log 2>&1; echo "span rc=$?"
grep -E "median|Error|error" $OUT/span.log | cut -c1-200
timeout 150 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider -k prefill > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for try in 1 2; do
  timeout 60 "$CS" --tool racecheck --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize 0 > $OUT/racecheck_0.log 2>&1
  rc=$?; echo "racecheck:0 try $try rc=$rc $(grep -E 'rel err|RACECHECK SUMMARY' $OUT/racecheck_0.log | tr '\n' ' ' | cut -c1-160)"; [ $rc -eq 0 ] && break
done
timeout 90 "$CS" --tool racecheck --kernel-name kns=jattn python3 $S14/sanitize_reuse.py 128 1100 16 > $OUT/racecheck_reuse.log 2>&1
echo "reuse rc=$? $(grep -E 'tiles|RACECHECK SUMMARY' $OUT/racecheck_reuse.log | tr '\n' ' ' | cut -c1-200)"
cp benchmarks/results/2026-11-27-h100-80gb-hbm3.json $OUT/
for run in 1 2; do
bash scripts/gpu_check.sh --no-tests --bench --budget 150 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
cp $OUT/bench.log $OUT/bench_run$run.log
grep -E "^  (jattn.attention|cudnn|tokamax.mosaic)|device clock: span" $OUT/bench.log | grep -v unavailable | cut -c1-110 | head -8
grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
done
rm -f $OUT/*.png $OUT/gpu_tests.log $OUT/bench.log
