"""Session 17, call 12: K and V through registers, 16 bytes a thread (`decode.LDG`).

Calls 9-11: finer fetches lower the decode's DRAM rate, and converting whole raw rows on
the critical path costs more than it returns. cuDNN's decode loads with 16-byte requests
from every thread. Here each thread loads its 16-byte pieces of the next tile's K and V
rows straight from the pages (`plgpu.load` of a GMEM ref in the `SMEM_GMEM_COPY` layout:
the two 128-byte halves of a row go to two warps in the same instruction), keeps them in
registers while this tile's products run, and stores them into the other swizzled slot
at the end of the step (no TMA, no ring barriers; two slots). Prediction: B32 / B128
within ±3 % of the TMA ring (fewer bytes in flight: one tile a CTA); B16 slower.

  PYTHONPATH=. python3 benchmarks/results/session17/ldg_probe.py OUT_DIR
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
def ldg(on):
  real = pd.LDG
  pd.LDG = on
  jax.clear_caches()
  try:
    yield
  finally:
    pd.LDG = real


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
    for label, on in (("TMA ring", False), ("registers", True)):
      with ldg(on):
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
  with open(f"{out}/ldg_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
