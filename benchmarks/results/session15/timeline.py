"""Session 15: where a float8 prefill call's span goes besides the attention kernel (B4
T4096 H32 D128 causal): kernel start offsets and gaps within one call, from the
profiler's records over 20 back-to-back calls, for `jattn.attention` with default scales
(None: now constants of the program) and with a traced scalar scale (broadcast inside the
jitted function: what None cost before).

  PYTHONPATH=. python3 benchmarks/results/session15/timeline.py
"""

import glob
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks import fp8_probe as fp


def timeline(fn, args, calls=20):
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(calls):
        last = fn(*args)
      jax.block_until_ready(last)
    (path,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    ev = []
    for plane in jax.profiler.ProfileData.from_file(path).planes:
      if plane.name.startswith("/device:GPU"):
        for line in plane.lines:
          if line.name.startswith("Stream"):
            ev += [(e.start_ns, e.duration_ns, e.name[:40]) for e in line.events]
  ev.sort()
  per = len(ev) // calls
  span = (ev[-1][0] + ev[-1][1] - ev[0][0]) / calls / 1e3
  print(f"  {per} kernels a call, span {span:.1f} us a call")
  for c in (calls // 2, calls // 2 + 1):  # two calls in the middle
    t0 = ev[c * per][0]
    prev_end = ev[c * per - 1][0] + ev[c * per - 1][1]
    print(f"  call {c}: gap after the previous call's last kernel {(t0 - prev_end) / 1e3:.1f} us")
    for s, dur, name in ev[c * per:(c + 1) * per]:
      print(f"    +{(s - t0) / 1e3:7.1f} us  {dur / 1e3:7.1f} us  {name}")


def main():
  B, T, H, D = 4, 4096, 32, 128
  q, k, v = (x.astype(fp.F8) for x in fp.prefill_inputs(jax.random.key(0), B, T, H, D, n=1)[0])
  one = jnp.float32(1.0)
  f_none = jax.jit(lambda q, k, v: jattn.attention(q, k, v, causal=True, implementation="cuda"))
  f_traced = jax.jit(lambda q, k, v, s: jattn.attention(q, k, v, causal=True, q_scale=s,
                                                         k_scale=s, v_scale=s,
                                                         implementation="cuda"))
  print("default scales (None)")
  timeline(f_none, (q, k, v))
  print("a traced scalar scale (broadcast in the program)")
  timeline(f_traced, (q, k, v, one))


if __name__ == "__main__":
  main()
