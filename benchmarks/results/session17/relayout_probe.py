"""Session 17, call 11: whole-row TMA copies swizzled in place (`decode.RELAYOUT`).

Calls 9-10: the finer each 256-byte K/V row is cut into fetches, the lower the decode's
DRAM rate (64-byte swizzle +4 % at B32); whole rows through the staged path's separate
tiles won at one CTA per SM (−3 %) but, at 113-129 KB a CTA, lost at two (+4 %). Here the
TMA copies land raw (no swizzle: each row fetched whole) in the ring, and each thread
loads its fragments of the raw slot, waits for the warpgroup, and stores them back into
the same bytes in the swizzled layout wgmma reads (a `plgpu.RefUnion` of the raw ring and
its tiled view). Shared memory as the kernel's own (97 KB: two CTAs per SM). Prediction:
B32 / B128 1-3 % faster than the swizzled ring if the fetches are what separates us from
cuDNN and the in-place conversion hides under the stream; B16 3-5 % faster.

  PYTHONPATH=. python3 benchmarks/results/session17/relayout_probe.py OUT_DIR
"""

import contextlib
import hashlib
import json
import sys

import jax
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, device_span, log, more_rounds
from jattn.pallas import decode as pd


@contextlib.contextmanager
def relayout(on):
  real = pd.RELAYOUT
  pd.RELAYOUT = on
  jax.clear_caches()
  try:
    yield
  finally:
    pd.RELAYOUT = real


def main(out):
  res, timed = {}, []
  for B, S in ((32, 4096), (128, 2048), (16, 4096)):
    wl = W.Workload(f"decode_gqa32x8_b{B}_s{S}_d128_p16", "decode", B, 1, S, 32, 8, 128,
                    page_size=16)
    data = impls.Data(wl)
    args = []
    for p in data.paged:
      plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                               wl.num_kv_heads, wl.head_dim, split=False)
      args.append((p["q"], p["cache"], p["table"], p["kv_lens"], plan))
    rows, ref, hashes = [], None, set()
    for label, on in (("swizzled ring", False), ("relayout", True)):
      with relayout(on):
        fn = jax.jit(lambda q, c, t, kl, plan: pd.decode(
            q, c, t, kl, sm_scale=wl.sm_scale, variant=jattn.Variant(), plan=plan)[0])
        try:
          comp = fn.lower(*args[0]).compile()
        except Exception as e:  # noqa: BLE001
          log(f"B{B} {label}: does not compile: {type(e).__name__}: {str(e)[:300]}")
          continue
      h = hashlib.sha1(comp.as_text().encode()).hexdigest()
      assert h not in hashes, label
      hashes.add(h)
      o = np.asarray(comp(*args[0]), np.float32)
      ref = o if ref is None else ref
      err = float(np.max(np.abs(o - ref)) / np.max(np.abs(ref)))
      log(f"B{B} {label}: max |o - o_ring| / max |o_ring| = {err:.1e}")
      assert err < 1e-2, label
      rows.append((label, comp, args))
    prep = impls.cudnn(wl, data)
    rows.append(("cudnn", prep.fn, prep.args))
    for label, fn, a in rows:
      key = f"B{B} {label}"
      t = bench(fn, a)
      span = device_span(fn, a)
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                          kernel_us=round(max(span["by_kernel"].values()) * 1e6, 2))
      timed.append((r, fn, a))
      log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    log(f"{key:18s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us "
        f"{r['bytes'] / r['kernel_us'] / 1e3:6.0f} GB/s  rounds "
        f"{', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/relayout_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
