"""Session 22, call 3: the block-sparse kernel's loads alone — its data-movement floor.

Call 2 put the density-0.1 row at 1.34x its own density-1.0 rate per key, and the
density-1.0 row (every tile shared by both consumers: half the bytes) at 1.14x dense.
At density 0.1 each consumer loads its own K and V tile every step: 32 heads x 128 q
tiles x 13 tiles x 32 KB = 1.70 GB from L2 into shared memory, 6.1-6.7 TB/s at the
measured 0.253-0.280 ms. The bar (1.3 x density x dense) asks for ~0.237 ms on the
H100, i.e. 7.2 TB/s. Here the same kernel, layout and producer run with the consumers'
own lists cut to zero (`Sparse.segment` patched to (0, 0)): every step is the kernel's
idle step (the barrier protocol, no math) while the producer loads every tile. Output:
zeros (timing only). Prediction: if the loads bound the kernel, loads-only is within
10 % of the full kernel at 0.1 (0.23-0.26 ms) and the bar's 0.237 ms is at or below
it; if the chain of latencies does (session 21 call 3's reading), loads-only is 25 %
or more faster than the kernel.

  PYTHONPATH=. python3 benchmarks/results/session22/loads_only_probe.py OUT_DIR
"""

import contextlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks.timing import bench, device_span, log, more_rounds
from jattn import block_sparse as bs, variants as V
from jattn.pallas import block_sparse as PB, prefill as P


@contextlib.contextmanager
def loads_only(on):
  real = PB.Sparse.segment
  if on:
    PB.Sparse.segment = lambda self, refs, h, r0, c: (jnp.int32(0), jnp.int32(0))
  jax.clear_caches()
  try:
    yield
  finally:
    PB.Sparse.segment = real


def main(out):
  B, T, N, D = 1, 8192, 32, 128
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (B, T, N, D), jnp.bfloat16) for kk in ks)
  rows = []
  dense = jax.jit(lambda q, k, v: jattn.attention(q, k, v, implementation="pallas"))
  rows.append(("dense", dense, (q, k, v), None))
  for d in (0.1, 0.5, 1.0):
    lay = bs.random_layout(N, T, T, 64, d, seed=0)
    plan = jattn.plan_block_sparse(lay, T, T)
    for label, on in (("kernel", False), ("loads only", True)):
      with loads_only(on):
        fn = jax.jit(lambda q, k, v, lay, plan: PB.block_sparse_attention(
            q, k, v, lay, sm_scale=D ** -0.5, variant=V.Variant(), plan=plan)[0])
        comp = fn.lower(q, k, v, lay, plan).compile()
      o = np.asarray(comp(q, k, v, lay, plan), np.float32)
      log(f"density {d} {label}: max |o| = {np.max(np.abs(o)):.3g}")
      rows.append((f"density {d} {label}", comp, (q, k, v, lay, plan),
                   float(np.asarray(lay.block_mask).mean())))
  res, timed = {}, []
  for label, fn, a, real in rows:
    t = bench(fn, [a])
    span = device_span(fn, [a])
    r = res[label] = dict(ms_rounds=[t.median_s * 1e3], real_density=real,
                          kernel_us=round(max(span["by_kernel"].values()) * 1e6, 2))
    timed.append((r, fn, [a]))
    log(f"r0 {label} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  dense_ms = res["dense"]["ms"]
  for label, r in res.items():
    extra = ""
    if r["real_density"]:
      extra = f" / (density x dense) = {r['ms'] / (r['real_density'] * dense_ms):.3f}"
    log(f"{label:22s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us{extra}  rounds "
        f"{', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/loads_only_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
