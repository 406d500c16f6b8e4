"""Session 17, call 4: the bf16 decode's per-tile latency. Call 3 showed that at one CTA
per SM (B16) the decode reads 15 % slower than cuDNN's, and at two (B32) 2.5 %: its CTAs
keep too few bytes in flight, or lose time between a tile's arrival and the next refill.
Rows (module flags of jattn.pallas.decode, traced per row; host plans, no split):

  base      the code before this session: K and V slots refilled after P V, P via SMEM
  earlyK    K's slot refilled right after Q K^T (V after P V); V waited for before P V only
  pregs     P V with P from registers (no SMEM store and fence)
  both      earlyK + pregs
  both,s3   both, with Q staged first and a 3-deep ring (2 x 113 KB per SM, if it fits)
  cudnn     the harness's peer

  PYTHONPATH=. python3 benchmarks/results/session17/refill_probe.py OUT_DIR
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

ROWS = {"base": (False, False, None), "earlyK": (True, False, None),
        "pregs": (False, True, None), "both": (True, True, None),
        "both,s3": (True, True, pd.DecodeConfig(stages=3, q_first=True))}


@contextlib.contextmanager
def flags(early, pregs):
  old = pd.EARLY_K_REFILL, pd.P_IN_REGISTERS
  pd.EARLY_K_REFILL, pd.P_IN_REGISTERS = early, pregs
  try:
    yield
  finally:
    pd.EARLY_K_REFILL, pd.P_IN_REGISTERS = old


def main(out):
  res, timed = {}, []
  shapes = [W.Workload(f"decode_gqa32x8_b{B}_s{S}_d128_p16", "decode", B, 1, S, 32, 8, 128,
                       page_size=16) for B, S in ((16, 4096), (32, 4096), (128, 2048))]
  for wl in shapes:
    data = impls.Data(wl)
    args = []
    for p in data.paged:
      plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                               wl.num_kv_heads, wl.head_dim, split=False)
      args.append((p["q"], p["cache"], p["table"], p["kv_lens"], plan))
    rows, ref, hashes = [], None, set()
    for label, (early, pregs, cfg) in ROWS.items():
      with flags(early, pregs):
        fn = jax.jit(lambda q, c, t, kl, plan, cfg=cfg: pd.decode(
            q, c, t, kl, sm_scale=wl.sm_scale, variant=jattn.Variant(), plan=plan,
            config=cfg)[0])
        try:
          comp = fn.lower(*args[0]).compile()
        except Exception as e:  # noqa: BLE001
          log(f"{wl.name} {label}: does not compile: {type(e).__name__}: {str(e)[:300]}")
          continue
      h = hashlib.sha1(comp.as_text().encode()).hexdigest()[:10]
      assert h not in hashes, f"{label}: same executable as an earlier row"
      hashes.add(h)
      o = np.asarray(comp(*args[0]), np.float32)
      if ref is None:
        ref = o
      err = float(np.max(np.abs(o - ref)) / np.max(np.abs(ref)))
      log(f"{wl.name} {label}: max |o - base| / max |base| = {err:.2e}")
      assert err < 2e-2, label
      rows.append((label, comp, args))
    prep = impls.cudnn(wl, data)
    rows.append(("cudnn", prep.fn, prep.args))
    for label, fn, a in rows:
      key = f"B{wl.batch} {label}"
      t = bench(fn, a)
      span = device_span(fn, a)
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                          kernel_us=round(max(span["by_kernel"].values()) * 1e6, 2))
      timed.append((r, fn, a))
      log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    log(f"{key:14s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us "
        f"{r['bytes'] / r['kernel_us'] / 1e3:6.0f} GB/s  rounds "
        f"{', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/refill_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
