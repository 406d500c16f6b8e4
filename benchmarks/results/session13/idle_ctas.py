"""Session 13, call 1: does the bf16 decode lose time to launching idle CTAs and to two
broadcast kernels that make constants?  Interleaved rounds in one process, 25 ms
repetitions, each row also by the device clock (profiler kernel records).

Rows per workload (host plans; none of these shapes splits):
  new        the plan's work lists only the B x Nkv real CTAs; scales/params are constants
  idle       the same units, the work padded with the U x Nkv - B x Nkv idle CTAs (the old grid)
  bcast      the old jnp.ones / jnp.zeros constants (two broadcast fusions a call)
  idle+bcast the code before this session
  cudnn, tokamax.triton   the harness's peers on the same data

  PYTHONPATH=. python3 benchmarks/results/session13/idle_ctas.py OUT_DIR
"""

import contextlib
import dataclasses
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, device_span, log, more_rounds
from jattn.pallas import decode as pd

NAMES = ("decode_gqa32x8_b32_s4096_d128_p16", "decode_gqa32x8_b128_s2048_d128_p16",
         "decode_mha32_b32_s4096_d128_p16")


@contextlib.contextmanager
def old_constants():
  """While tracing: decode.py's np.ones / np.zeros become traced jnp ones / zeros."""
  real = pd.np
  pd.np = types.SimpleNamespace(ones=jnp.ones, zeros=jnp.zeros, float32=jnp.float32)
  try:
    yield
  finally:
    pd.np = real


def padded(plan, H):
  """The plan's work with the idle CTAs of the unit slots appended (the old grid)."""
  U, n = plan.max_units, plan.work.shape[0] // H
  rows = np.arange(n, U)
  idle = np.stack([np.full(rows.size * H, -1), np.zeros(rows.size * H),
                   np.zeros(rows.size * H), np.tile(rows, H), np.repeat(np.arange(H), rows.size)],
                  axis=1).astype(np.int32)
  return dataclasses.replace(plan, work=jnp.concatenate([plan.work, jnp.asarray(idle)]))


def main(out):
  res, timed = {}, []

  def run(q, c, t, kl, plan):
    return jattn.decode(q, c, t, kl, plan=plan, implementation="pallas")
  f_new = jax.jit(run)

  @jax.jit
  def f_old(q, c, t, kl, plan):
    with old_constants():
      return run(q, c, t, kl, plan)

  for name in NAMES:
    wl = next(w for w in W.STANDARD if w.name == name)
    data = impls.Data(wl)
    new, idle = [], []
    for p in data.paged:
      plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                               wl.num_kv_heads, wl.head_dim)
      assert not plan.split
      base = (p["q"], p["cache"], p["table"], p["kv_lens"])
      new.append(base + (plan,))
      idle.append(base + (padded(plan, wl.num_kv_heads),))
    rows = [("new", f_new, new), ("idle", f_new, idle), ("bcast", f_old, new),
            ("idle+bcast", f_old, idle)]
    for peer, build in (("cudnn", impls.cudnn), ("tokamax.triton", impls.tokamax_impl("triton"))):
      try:
        prep = build(wl, data)
        rows.append((peer, prep.fn, prep.args))
      except Exception as e:  # noqa: BLE001
        log(f"{peer} unavailable: {e}")
    for label, fn, args in rows:
      key = f"{name} {label}"
      t = bench(fn, args)
      span = device_span(fn, args)
      us = lambda x: None if x is None else round(x * 1e6, 2)
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                          span_us=us(span.get("span_s")), busy_us=us(span.get("busy_s")),
                          by_kernel_us={k: us(v) for k, v in span.get("by_kernel", {}).items()},
                          ctas=(int(args[0][4].work.shape[0])
                                if label in ("new", "idle", "bcast", "idle+bcast") else None))
      timed.append((r, fn, args))
      log(f"r0 {key:50s} {t.median_s * 1e3:.4f} ms  span {r['span_us']} us")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    r["gbps"] = r["bytes"] / r["ms"] / 1e6
    log(f"{key:50s} {r['ms']:.4f} ms {r['gbps']:6.0f} GB/s  ctas {r['ctas']}  rounds "
        f"{', '.join(f'{x:.4f}' for x in r['ms_rounds'])}  span {r['span_us']} us  "
        f"kernels {r['by_kernel_us']}")
  with open(f"{out}/idle_ctas.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
