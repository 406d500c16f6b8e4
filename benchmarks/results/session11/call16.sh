# Session 11, device call 16: is the float8 decode's rate tied to its TMA box size? The
# same shape (B32 S4096 Hq32 Hkv8 D128) with pages of 16 (2 KB boxes), 64 (8 KB) and
# 128 (16 KB), each with its bf16 twin, 3 interleaved rounds per shape.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache
timeout 400 python3 -m benchmarks.fp8_probe --only decode --rounds 3 \
  --decode-shapes 32:4096:32:8:64,32:4096:32:8:128 --out $OUT > $OUT/probe.log 2>&1
grep -E "ceilings|decode [a-z_0-9]+ +[0-9.]+ us \(median|failed" $OUT/probe.log | cut -c1-200
