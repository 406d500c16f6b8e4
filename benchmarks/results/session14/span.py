"""Session 14: float8 prefill build variants by the device clock (B4 T4096 H32 D128
causal, the FFI call alone): per variant the call's span and each kernel's duration
(profiler records over 20 calls), rounds interleaved, and the output's relative error
against the default build's.

  PYTHONPATH=. python3 benchmarks/results/session14/span.py OUT_DIR ROUNDS VARIANT[,...]
  VARIANT: "default" or MACRO=VALUE[:MACRO=VALUE...], e.g. P_BIAS=8.f:RESCALE_TAU=0.f
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import fp8_probe as fp
from benchmarks.timing import device_span, log
from jattn.bench.definitions import rel_err
from jattn.ffi import build, fp8


def main(out, rounds, specs):
  B, T, H, D = 4, 4096, 32, 128
  s8 = [tuple(x.astype(fp.F8) for x in s) for s in fp.prefill_inputs(jax.random.key(0), B, T, H, D)]
  one = jnp.ones((H,), jnp.float32)
  fns, res, ref = {}, {}, None
  for spec in specs:
    extra = () if spec == "default" else tuple(tuple(kv.split("=")) for kv in spec.split(":"))
    k = fp.variant(build.prefill_kernel(D, True, fp8.device_arch()), extra)
    call = jax.ffi.ffi_call(fp.register(k), fp8.prefill_result_shapes(B, T, T, H, H, D))
    fns[spec] = jax.jit(lambda q, kk, v, call=call: call(
        q, kk, v, one, one, one, sm_scale=np.float32(D ** -0.5), causal=np.bool_(True))[0])
    o = fns[spec](*s8[0])
    ref = o if ref is None else ref
    res[spec] = dict(rel_err_vs_first=rel_err(o, ref), span_us=[], by_kernel_us=[])
  for rnd in range(rounds):
    for spec, f in fns.items():
      sp = device_span(f, s8, calls=20)
      r = res[spec]
      r["span_us"].append(sp["span_s"] * 1e6)
      r["by_kernel_us"].append({k[:48]: v * 1e6 for k, v in sp["by_kernel"].items()})
      log(f"round {rnd} {spec:40s} span {sp['span_s'] * 1e6:7.1f} us")
  for spec, r in res.items():
    r["span_us_median"] = float(np.median(r["span_us"]))
    log(f"{spec:40s} median span {r['span_us_median']:7.1f} us  rel_err vs first "
        f"{r['rel_err_vs_first']:.2e}")
  with open(f"{out}/span.json", "w") as fh:
    json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, results=res), fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","))
