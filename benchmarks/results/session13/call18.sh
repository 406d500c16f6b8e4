# Session 13, device call 18 (an H100): the consumers release a Q slot after a warpgroup
# barrier (call 17's racecheck flagged the D256 prefill's tile-index slot): racecheck on
# D256 and D128 causal, the float8 prefill GPU tests, then the harness's float8 prefill
# twin with its bf16 twin (device clock too), merged into today's H100 results.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
python3 -c "
from jattn.ffi import build
build.build_many([(k, 'sm_90a') for k in build.default_kernels('sm_90a')])" 2>&1 | tail -1
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for job in racecheck:2 racecheck:0 racecheck:1; do
  tool=${job%:*}; case=${job#*:}
  timeout 100 "$CS" --tool $tool --kernel-name kns=jattn python3 -m benchmarks.fp8_probe --sanitize $case > $OUT/sanitizer_$tool$case.log 2>&1
  echo "$job rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer_$tool$case.log | tail -1)"
done
timeout 200 python3 -m pytest tests/test_fp8_gpu.py -q -p no:cacheprovider -k prefill > $OUT/pytest.log 2>&1; echo "pytest rc=$?" >> $OUT/pytest.log; tail -2 $OUT/pytest.log
case "$GPU" in *H100*) cp benchmarks/results/2026-11-26-h100-80gb-hbm3.json $OUT/ ;; *H200*) cp benchmarks/results/2026-11-26-h200.json $OUT/ 2>/dev/null ;; esac
bash scripts/gpu_check.sh --no-tests --bench --budget 200 -- --workloads prefill_causal_b4_t4096_h32_d128_fp8,prefill_causal_b4_t4096_h32_d128 --device-span > /dev/null 2>&1
grep -E "^## |^  (jattn.attention|cudnn|tokamax.mosaic)|device clock: span" $OUT/bench.log | grep -v unavailable | cut -c1-160
grep -E "^\| \`prefill_causal_b4_t4096_h32_d128" $OUT/*.md | grep -o "[0-9.]*× ([a-z.]*)\|[0-9.]*× bf16 jattn, [0-9.]*× bf16 peer"
rm -f $OUT/*.png $OUT/gpu_tests.log
