# Session 13, device call 2: float8 prefill with part of the exponentials on the FMA pipe
# (build knob EXP_POLY = 2, 4, 8 against 0), 5 interleaved rounds, plus each build's SASS
# instruction counts.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader); echo "$GPU"
timeout 400 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1; echo "probe rc=$?"
grep -E "^\[.*prefill [a-z]" $OUT/probe.log | grep -v " r0 " | cut -c1-200
for f in .jattn-cache/jattn_prefill_causal1*head_dim128*.so; do
  cuobjdump -sass $f > /tmp/k.sass
  echo "$(basename $f): MUFU.EX2 $(grep -c MUFU.EX2 /tmp/k.sass) FFMA $(grep -c FFMA /tmp/k.sass) DEPBAR $(grep -c WARPGROUP.DEPBAR /tmp/k.sass) instr $(grep -cE '^\s+/\*[0-9a-f]{4}\*/' /tmp/k.sass)"
done | tee $OUT/sass_counts.txt
