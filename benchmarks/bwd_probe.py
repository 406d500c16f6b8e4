"""Where the backward's time goes (B4 T4096 H32 D128 causal): its two kernels alone (dK/dV
and dQ), against the whole `flash_backward` (with its XLA pre-pass). Interleaved rounds,
one process.

  PYTHONPATH=. python3 -m benchmarks.bwd_probe [--rounds 3] [--nkv 8] [--only S] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import jax
import jax.numpy as jnp

from benchmarks.prefill_probe import bench, rand
from jattn import variants as V
from jattn.pallas import prefill as P, prefill_bwd as PB


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--nkv", type=int, default=32)
  ap.add_argument("--only", default="", help="substring of the row names to time")
  args = ap.parse_args()
  B, T, Nq, Nkv, D = 4, 4096, 32, args.nkv, 128
  ks = jax.random.split(jax.random.key(0), 4)
  q = rand(ks[0], (B, T, Nq, D), jnp.bfloat16)
  k, v = (rand(kk, (B, T, Nkv, D), jnp.bfloat16) for kk in ks[1:3])
  do = rand(ks[3], q.shape, q.dtype)
  c, sc = V.causal(), D ** -0.5
  o, lse = jax.jit(lambda q, k, v: P.flash_forward(q, k, v, None, c, sm_scale=sc))(q, k, v)
  lse2 = (lse * P.LOG2E).astype(jnp.float32)
  delta = jnp.einsum("btnd,btnd->bnt", do.astype(jnp.float32), o.astype(jnp.float32))
  cfg = PB.BwdConfig()
  base = (q, k, v, do, lse2, delta, None, c, sc, cfg, False, (T, T))

  rows = {   # name -> (function, its arguments)
      "dK/dV kernel": (lambda *a: PB._dkv(*a, *base[6:]), base[:6]),
      "dQ kernel": (lambda *a: PB._dq(*a, *base[6:]), base[:6]),
      "flash_backward (both + XLA pre-pass)": (
          lambda q, k, v, o, lse, do: PB.flash_backward(
              q, k, v, None, c, o, lse, do, jnp.zeros_like(lse), sm_scale=sc),
          (q, k, v, o, lse, do)),
  }
  made = {}
  for name, (f, fargs) in rows.items():
    if args.only not in name:
      continue
    fn = jax.jit(f)
    made[name] = [fn, fargs, [bench(fn, fargs) * 1e3]]
    print(name, made[name][2], flush=True)
  for _ in range(args.rounds - 1):
    for name, (fn, fargs, ts) in made.items():
      ts.append(bench(fn, fargs) * 1e3)
  res = {n: dict(ms=statistics.median(ts), rounds=ts) for n, (_, _, ts) in made.items()}
  for n, r in res.items():
    print(f"{n:50s} {r['ms']:.3f} ms  {r['rounds']}")
  with open(os.path.join(args.out, f"bwd_probe_nkv{Nkv}.json"), "w") as fh:
    json.dump(dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, rows=res),
              fh, indent=1)


if __name__ == "__main__":
  main()
