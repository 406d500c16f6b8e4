# Session 12, device call 11: the float8 prefill with blocks of 192 keys (PREFILL_BN=192,
# a probe variant) against the default 128, 5 interleaved rounds, errors against cuDNN.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python3 -m benchmarks.fp8_probe --only prefill --rounds 5 --out $OUT > $OUT/probe.log 2>&1
echo "probe rc=$?"
grep -E "prefill [a-z_0-9]+ +[0-9.]+ ms |rel_err|failed|speed" $OUT/probe.log | grep -v " r0 " | cut -c1-200
python3 -c "import json; d=json.load(open('$OUT/fp8_probe.json'))['prefill']; [print(k, v) for k, v in d.items() if k.startswith('rel_err')]"
