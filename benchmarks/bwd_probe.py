"""Where the backward's time goes (B4 T4096 H32 D128 causal): its two kernels alone (dK/dV
and dQ), against the whole `flash_backward` (with its XLA pre-pass). Interleaved rounds,
one process.

  PYTHONPATH=. python3 -m benchmarks.bwd_probe [--rounds 3] [--nkv 8] [--only S] [--out DIR]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp

from benchmarks.prefill_probe import bench, rand
from benchmarks.timing import log, more_rounds, probe_results, write_probe
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
  base = (q, k, v, do, lse2, delta, None, c, sc, PB.BwdConfig(), False, (T, T))

  rows = {   # name -> (function, its arguments)
      "dK/dV kernel": (lambda *a: PB._dkv(*a, *base[6:]), base[:6]),
      "dQ kernel": (lambda *a: PB._dq(*a, *base[6:]), base[:6]),
      "flash_backward (both + XLA pre-pass)": (
          lambda q, k, v, o, lse, do: PB.flash_backward(
              q, k, v, None, c, o, lse, do, jnp.zeros_like(lse), sm_scale=sc),
          (q, k, v, o, lse, do)),
  }
  results, timed = probe_results(), []
  time_ms = lambda fn, fargs: bench(fn, fargs) * 1e3
  for name, (f, fargs) in rows.items():
    if args.only not in name:
      continue
    fn = jax.jit(f)
    row = dict(shape=f"B{B} T{T} Hq{Nq} Hkv{Nkv} D{D}", impl=name,
               ms_rounds=[time_ms(fn, fargs)])
    log("time", row)
    results["timing"].append(row)
    timed.append((row, fn, fargs))
  more_rounds(timed, args.rounds, time_ms)
  write_probe(results, os.path.join(args.out, f"bwd_probe_nkv{Nkv}.json"),
              lambda r: f"{r['shape']:26s} {r['impl']:40s} {r['ms']:8.3f} ms  {r['ms_rounds']}")


if __name__ == "__main__":
  main()
