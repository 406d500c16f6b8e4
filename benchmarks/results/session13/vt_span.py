"""Session 13: the float8 prefill's V transpose beside the attention kernel, by the device
clock: for each JATTN_VT_CTAS build, the call's span and each kernel's own duration
(profiler records over 20 calls), the FFI call alone.

  PYTHONPATH=. python3 benchmarks/results/session13/vt_span.py OUT_DIR CTAS[:MACRO=V...][,...]
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import fp8_probe as fp
from benchmarks.timing import device_span, log
from jattn.ffi import build, fp8


def main(out, ctas):
  B, T, H, D = 4, 4096, 32, 128
  s8 = [tuple(x.astype(fp.F8) for x in s) for s in fp.prefill_inputs(jax.random.key(0), B, T, H, D)]
  one = jnp.ones((H,), jnp.float32)
  res = {}
  for n in ctas:   # "16" or "16:VT_LOAD=1"
    n, *extra = str(n).split(":")
    extra = tuple((kv.split("=")[0], int(kv.split("=")[1])) for kv in extra)
    k = fp.variant(build.prefill_kernel(D, True, fp8.device_arch()), (("VT_CTAS", int(n)),) + extra)
    call = jax.ffi.ffi_call(fp.register(k), fp8.prefill_result_shapes(B, T, T, H, H, D))
    f = jax.jit(lambda q, kk, v: call(q, kk, v, one, one, one, sm_scale=np.float32(D ** -0.5),
                                      causal=np.bool_(True))[0])
    for rep in range(2):
      sp = device_span(f, s8, calls=20)
      r = res[f"{n} {extra} rep{rep}"] = dict(span_us=sp["span_s"] * 1e6, busy_us=sp["busy_s"] * 1e6,
                                      by_kernel_us={k: v * 1e6 for k, v in sp["by_kernel"].items()})
      log(f"VT_CTAS={n:>5s} {extra} rep{rep}: span {r['span_us']:.1f} us, kernels "
          + ", ".join(f"{k[:40]} {v:.1f}" for k, v in r["by_kernel_us"].items()))
  with open(f"{out}/vt_span.json", "w") as fh:
    json.dump(res, fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2].split(","))
