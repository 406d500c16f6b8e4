"""Session 14: build float8 prefill variants in parallel (JATTN_CACHE_DIR) before timing.
  PYTHONPATH=. python3 benchmarks/results/session14/prebuild.py VARIANT[,...]"""
import sys
from concurrent.futures import ThreadPoolExecutor

from benchmarks import fp8_probe as fp
from jattn.ffi import build, fp8

arch = fp8.device_arch()
specs = sys.argv[1].split(",")
ks = [fp.variant(build.prefill_kernel(d, c, arch),
                 () if s == "default" else tuple(tuple(kv.split("=")) for kv in s.split(":")))
      for s in specs for d in (64, 128, 256) for c in (False, True)]
with ThreadPoolExecutor(16) as ex:
  for k, p in zip(ks, ex.map(lambda k: build.build(k, arch), ks)):
    print(k.tag(), p)
