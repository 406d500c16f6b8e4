# Session 14, device call 12: racecheck on a D128 causal prefill whose Q slots are reused
# (144 tiles on 132 SMs: 12 CTAs write their end-of-work index into slot 0 again).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for args in "128 1100 16"; do
  tag=$(echo $args | tr ' ' _)
  timeout 200 "$CS" --tool racecheck --kernel-name kns=jattn python3 benchmarks/results/session14/sanitize_reuse.py $args > $OUT/racecheck_$tag.log 2>&1
  echo "$args rc=$? $(grep -E 'tiles|RACECHECK SUMMARY' $OUT/racecheck_$tag.log | tr '\n' ' ' | cut -c1-200)"
done
