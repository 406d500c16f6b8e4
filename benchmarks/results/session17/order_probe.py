"""Session 17, call 2: does the order of the decode's CTAs (the plan's `work` rows) move
its stream rate? cuDNN's decode (grid 1 x Nkv x B: the kv heads of one sequence are
adjacent in dispatch) reads 4 % faster with the eight heads interleaved in each token row
than with one kv head (call 1); ours read about the same both ways. Session 2's decode run
4 had sequence-major order 6-8 % slower, on a kernel since rewritten. Orders of the same
host plan's rows (no split at these shapes):

  kvh-major   the host plan's (longest first, then kv head, then unit)
  seq-major   the kv heads of one sequence adjacent (cuDNN's order)
  random      a fixed random permutation

  PYTHONPATH=. python3 benchmarks/results/session17/order_probe.py OUT_DIR
"""

import dataclasses
import json
import sys

import jax
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, device_span, log, more_rounds

NAMES = ("decode_gqa32x8_b32_s4096_d128_p16", "decode_gqa32x8_b128_s2048_d128_p16")


def reorder(plan, how):
  work = np.asarray(plan.work)
  if how == "seq-major":
    order = np.lexsort((work[:, 4], work[:, 0]))
  elif how == "random":
    order = np.random.default_rng(0).permutation(work.shape[0])
  else:
    return plan
  return dataclasses.replace(plan, work=jax.numpy.asarray(work[order]))


def main(out):
  res, timed = {}, []
  f = jax.jit(lambda q, c, t, kl, plan: jattn.decode(q, c, t, kl, plan=plan,
                                                      implementation="pallas"))
  for name in NAMES:
    wl = next(w for w in W.STANDARD if w.name == name)
    data = impls.Data(wl)
    rows = []
    for how in ("kvh-major", "seq-major", "random"):
      args = []
      for p in data.paged:
        plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                                 wl.num_kv_heads, wl.head_dim)
        assert not plan.split
        args.append((p["q"], p["cache"], p["table"], p["kv_lens"], reorder(plan, how)))
      rows.append((how, f, args))
    prep = impls.cudnn(wl, data)
    rows.append(("cudnn", prep.fn, prep.args))
    ref = None
    for label, fn, a in rows:
      o = np.asarray(fn(*a[0]), np.float32)
      if label == "kvh-major":
        ref = o
      elif label != "cudnn":
        assert np.array_equal(o, ref), label
      key = f"{name} {label}"
      t = bench(fn, a)
      span = device_span(fn, a)
      us = lambda x: None if x is None else round(x * 1e6, 2)
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                          by_kernel_us={k: us(v) for k, v in span.get("by_kernel", {}).items()})
      timed.append((r, fn, a))
      log(f"r0 {key:50s} {t.median_s * 1e3:.4f} ms")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    busy = max(v for v in r["by_kernel_us"].values())
    log(f"{key:50s} {r['ms']:.4f} ms {r['bytes'] / r['ms'] / 1e6:6.0f} GB/s  largest kernel "
        f"{busy} us  rounds {', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/order_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
