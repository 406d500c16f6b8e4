"""Probe for the Pallas MLA kernel (`jattn/pallas/mla.py`): compiled correctness against
the XLA reference, then GB/s and TFLOP/s next to the XLA reference and the device's copy
and bf16 matmul ceilings, all in one process.

  python -m benchmarks.mla_probe [--out DIR] [--skip-check] [--tiny]

Bytes = ckv + kpe of every sequence read once, q and o once. FLOPs = 2 H (R + Dr + R)
per (query, key) pair (S = Q K^T over R + Dr, O = P V over R).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from jattn.pallas import mla
from benchmarks.timing import bench, ceilings
from jattn.bench.definitions import rel_err

INTERPRET = jax.default_backend() != "gpu"
R, DR = 512, 64

WORKLOADS = {   # name: (B, S, H, T, page_size)
    "mla_decode_b64_s4096_h128_p64": (64, 4096, 128, 1, 64),
    "mla_decode_b128_s8192_h16_p64": (128, 8192, 16, 1, 64),
}


def inputs(key, B, S, H, T, ps, dtype=jnp.bfloat16, r=R, dr=DR, lens=None, extra_pages=5):
  """Shuffled random pages, queries, page table and lengths (full unless given)."""
  M = -(-S // ps)
  P = B * M + extra_pages
  k = jax.random.split(key, 5)
  ckv = jax.random.normal(k[0], (P, ps, r), jnp.float32).astype(dtype)
  kpe = jax.random.normal(k[1], (P, ps, dr), jnp.float32).astype(dtype)
  table = jax.random.permutation(k[2], P)[:B * M].reshape(B, M).astype(jnp.int32)
  qn = jax.random.normal(k[3], (B, T, H, r), jnp.float32).astype(dtype)
  qp = jax.random.normal(k[4], (B, T, H, dr), jnp.float32).astype(dtype)
  kv_lens = jnp.full((B,), S, jnp.int32) if lens is None else jnp.asarray(lens, jnp.int32)
  return qn, qp, ckv, kpe, table, kv_lens


def kernel_fn(config=None):
  def f(qn, qp, ckv, kpe, table, lens):
    return mla.mla_decode(qn, qp, ckv, kpe, table, lens, sm_scale=192 ** -0.5,
                          interpret=INTERPRET, config=config)
  return jax.jit(f)


def xla_fn():
  def f(qn, qp, ckv, kpe, table, lens):
    return jattn.mla_decode(qn, qp, ckv, kpe, table, lens, sm_scale=192 ** -0.5,
                            return_lse=True, implementation="xla")
  return jax.jit(f)


QUICK = ("h16_t4_causal", "h128_t2_causal", "h16_split4_dupS", "h16_p16")


def check_cases(tiny):
  if tiny:
    return [("tiny_t1", dict(B=2, S=100, H=16, T=1, ps=16, r=64, dr=16, cfg=None))]
  base = dict(B=4, S=700, H=16, T=1, ps=64, r=R, dr=DR, cfg=None)
  cases = [
      ("h16_p64", {}),
      ("h128_p64_dupS", dict(H=128, cfg=mla.MLAConfig(share_p=False))),
      ("h16_t4_causal", dict(T=4)),
      ("h128_t2_causal", dict(H=128, T=2)),
      ("h16_t3_pad48_p128", dict(T=3, ps=128)),
      ("h16_p16", dict(ps=16)),
      ("h16_split4_dupS", dict(cfg=mla.MLAConfig(splits=4, share_p=False))),
      ("h128_split3", dict(H=128, cfg=mla.MLAConfig(splits=3))),
      ("h16_fp16", dict(dtype=jnp.float16)),
      ("h8_small_dims", dict(H=8, r=128, dr=32, ps=32)),
  ]
  return [(n, {**base, **c}) for n, c in cases]


def run_check(name, c, key):
  B, S, H, T = c["B"], c["S"], c["H"], c["T"]
  lens = np.array(jax.random.randint(jax.random.fold_in(key, 1), (B,), T, S + 1), np.int32)
  lens[0] = S
  if B > 2:
    lens[1] = 0 if T == 1 else T   # an empty sequence; a sequence of only new tokens
  args = inputs(key, B, S, H, T, c["ps"], c.get("dtype", jnp.bfloat16), c["r"], c["dr"],
                lens)
  t0 = time.perf_counter()
  o, lse = jax.block_until_ready(kernel_fn(c["cfg"])(*args))
  compile_s = time.perf_counter() - t0
  ro, rl = jax.block_until_ready(xla_fn()(*args))
  err = rel_err(o, ro)
  rl, lse = np.asarray(rl), np.asarray(lse)
  same_inf = bool(np.array_equal(np.isneginf(lse), np.isneginf(rl)))
  fin = np.isfinite(rl)
  lse_err = float(np.max(np.abs(lse[fin] - rl[fin]))) if fin.any() else 0.0
  tol = 1.5e-2 if jnp.dtype(c.get("dtype", jnp.bfloat16)) == jnp.dtype(jnp.bfloat16) else 3e-3
  ok = err <= tol and same_inf and lse_err < 0.05
  return dict(name=name, ok=bool(ok), rel_err=err, lse_err=lse_err, lse_inf_match=same_inf,
              compile_s=compile_s)


def time_workload(name, B, S, H, T, ps, ceil, tiny):
  keys = jax.random.split(jax.random.key(hash(name) % 2**31), 2)
  sets = [inputs(k, B, S, H, T, ps) for k in keys]
  nbytes = B * S * (R + DR) * 2 + B * T * H * (R + DR + R) * 2
  flops = 2 * H * (R + DR + R) * B * T * S
  rows = []
  impls = [("pallas shared-P (default)", kernel_fn()),
           ("pallas both-compute-S", kernel_fn(mla.MLAConfig(share_p=False))),
           ("jattn.mla_decode[xla]", xla_fn())]
  ref = None
  for label, fn in impls:
    try:
      t = bench(fn, sets, reps=3 if tiny else 7)
      o = np.asarray(t.out[0], np.float32)
      if ref is None:
        ref = np.asarray(jax.block_until_ready(xla_fn()(*sets[0]))[0], np.float32)
      s = t.median_s
      rows.append(dict(workload=name, impl=label, ms=s * 1e3, gbps=nbytes / s / 1e9,
                       tflops=flops / s / 1e12,
                       frac_copy=nbytes / s / 1e9 / ceil["copy_gbps"],
                       frac_matmul=flops / s / 1e12 / ceil["matmul_tflops"],
                       rel_err_vs_xla=rel_err(o, ref), compile_s=t.compile_s,
                       spread=[t.min_s * 1e3, t.max_s * 1e3]))
    except Exception as e:  # noqa: BLE001  (report and go on)
      rows.append(dict(workload=name, impl=label, error=f"{type(e).__name__}: {e}"[:2000]))
      traceback.print_exc()
    print(json.dumps(rows[-1]), flush=True)
  del sets
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--skip-check", action="store_true")
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--quick", action="store_true", help="4 checks, 3 timing repetitions")
  a = ap.parse_args()
  dev = jax.devices()[0]
  res = dict(device=getattr(dev, "device_kind", str(dev)), jax=jax.__version__,
             checks=[], timings=[])
  path = os.path.join(a.out, "mla_probe.json")

  def save():
    with open(path, "w") as f:
      json.dump(res, f, indent=1)

  res["ceilings"] = ceil = ceilings(tiny=a.tiny)
  print("ceilings", ceil, flush=True)
  save()
  # Timings first (the workloads' outputs are checked against the XLA reference there).
  work = WORKLOADS if not a.tiny else {"tiny": (2, 256, 16, 1, 64)}
  for name, shape in work.items():
    res["timings"] += time_workload(name, *shape, ceil, a.tiny or a.quick)
    save()
  if not a.skip_check:
    cases = check_cases(a.tiny)
    if a.quick:
      cases = [x for x in cases if x[0] in QUICK]
    for i, (name, c) in enumerate(cases):
      try:
        r = run_check(name, c, jax.random.key(100 + i))
      except Exception as e:  # noqa: BLE001
        r = dict(name=name, ok=False, error=f"{type(e).__name__}: {e}"[:2000])
        traceback.print_exc()
      res["checks"].append(r)
      print(json.dumps(r), flush=True)
      save()
  print("\n== checks:", sum(c["ok"] for c in res["checks"]), "/", len(res["checks"]), "ok;",
        [c["name"] for c in res["checks"] if not c["ok"]], "failed")
  print(f"copy {ceil['copy_gbps']:.0f} GB/s, matmul {ceil['matmul_tflops']:.0f} TFLOP/s "
        f"({res['device']})")
  for r in res["timings"]:
    if "error" in r:
      print(f"{r['workload']:34s} {r['impl']:26s} ERROR {r['error'][:200]}")
    else:
      print(f"{r['workload']:34s} {r['impl']:26s} {r['ms']:8.3f} ms {r['gbps']:7.0f} GB/s "
            f"({r['frac_copy']:.0%} copy) {r['tflops']:6.1f} TFLOP/s "
            f"({r['frac_matmul']:.0%} mm) err {r['rel_err_vs_xla']:.1e}")


if __name__ == "__main__":
  main()
