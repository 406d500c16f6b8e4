"""Where a persistent forward CTA spends an item: Mosaic GPU's profiler on the prefill
kernel's named regions (`item_start`: the Q and first-K waits and consumer 1's turn
offset; `steps`: the KV loop; `item_end`: consumer 0's turn offset and the epilogue),
per consumer warpgroup, on the GPU:

  PYTHONPATH=. python3 -m benchmarks.kernel_trace [--out DIR]

Cases: block-sparse B1 T8192 H32 D128 (the harness layouts, plan given) at density 0.1
and 0.5, and dense causal B4 T4096 H32 D128. Each is compiled with `JATTN_MOSAIC_PROFILE`
set and called once; the profiler stamps region entries and exits with the SM's clock
(`%clock`, cycles) in shared memory and writes a Chrome trace per call. The summary
(JSON, `kernel_trace.json`) gives, per case and consumer, the median cycles of each
region per item, of the gap between an item's end and the next one's start, and the
steps per item, with µs at the SM clock read from `nvidia-smi` (max clock, an
assumption: the clock under load may be lower).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import tempfile

import jax
import jax.numpy as jnp

from jattn import block_sparse as bs, variants as V
from jattn.pallas import block_sparse as PB, prefill as P


def cases():
  def sparse(d):
    B, T, N, D = 1, 8192, 32, 128
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (B, T, N, D), jnp.bfloat16) for kk in ks)
    lay = bs.random_layout(N, T, T, 64, d, seed=0)
    plan = bs.plan(lay, T, T)
    f = jax.jit(lambda q, k, v, lay, plan: PB.block_sparse_attention(
        q, k, v, lay, sm_scale=D ** -0.5, variant=V.Variant(), plan=plan)[0])
    return f, (q, k, v, lay, plan), round(d * 128)   # steps per item (64-key tiles)

  def causal():
    B, T, N, D = 4, 4096, 32, 128
    ks = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(kk, (B, T, N, D), jnp.bfloat16) for kk in ks)
    f = jax.jit(lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=V.causal(),
                                            q_lengths=None, kv_lengths=None)[0])
    return f, (q, k, v), None
  return {"block_sparse_density0.1": lambda: sparse(0.1),
          "block_sparse_density0.5": lambda: sparse(0.5),
          "causal_b4_t4096_d128": causal}


def summarize(events, ghz):
  """Per consumer warpgroup (trace), the items' region lengths in cycles."""
  by_tid = {}
  for e in events:
    by_tid.setdefault(e["tid"], []).append(e)
  per = {0: {}, 1: {}}   # consumer -> name -> [cycles]
  for tid, evs in by_tid.items():
    wg = (tid - 1) % 3
    if wg == 2:
      continue
    open_at, last_end = {}, None
    for e in evs:
      t = e["ts"] * 1e3     # the trace's ts is (start ns + cycles) / 1e3
      if e["ph"] == "B":
        open_at[e["name"]] = t
        if e["name"] == "item_start" and last_end is not None:
          per[wg].setdefault("gap", []).append(t - last_end)
      else:
        per[wg].setdefault(e["name"], []).append(t - open_at.pop(e["name"]))
        if e["name"] == "item_end":
          last_end = t
  out = {}
  for wg, names in per.items():
    out[f"consumer{wg}"] = {
        n: dict(median_cycles=statistics.median(v), median_us=statistics.median(v) / ghz / 1e3,
                count=len(v)) for n, v in names.items()}
  return out


def sm_ghz() -> float:
  try:
    mhz = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout.split()[0]
    return float(mhz) / 1e3
  except Exception:  # noqa: BLE001
    return 1.98


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  args = ap.parse_args()
  ghz = sm_ghz()
  res = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, sm_ghz=ghz,
             cases={})
  for name, make in cases().items():
    trace_dir = tempfile.mkdtemp(prefix="jattn-trace-")
    os.environ["JATTN_MOSAIC_PROFILE"] = trace_dir
    try:
      fn, a, steps = make()
      jax.block_until_ready(fn(*a))
    finally:
      del os.environ["JATTN_MOSAIC_PROFILE"]
    jax.effects_barrier()
    paths = sorted(glob.glob(os.path.join(trace_dir, "*trace.json")), key=os.path.getmtime)
    if not paths:
      res["cases"][name] = dict(error="no trace written")
      continue
    with open(paths[-1]) as f:
      trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    res["cases"][name] = dict(steps_per_item=steps, **summarize(events, ghz))
    print(name, json.dumps(res["cases"][name], indent=1), flush=True)
  with open(os.path.join(args.out, "kernel_trace.json"), "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
