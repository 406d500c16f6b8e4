"""Session 17, call 10: whole 256-byte rows through an unswizzled ring (the staged path).

Call 9 (the probe this one is copied from, see below): a 64-byte swizzle makes the decode
4 % slower at B32 and 15 % at B16, 32 bytes 14 % / 36 %: the finer each row is cut into
fetches, the lower the DRAM rate. An unswizzled TMA box fetches each 256-byte row whole.
The kernel's staged path (float8 and odd page sizes) already copies pages raw into the
ring and converts them through registers into the swizzled tiles wgmma reads; forced on
for bf16 here (`_staged`, `_ring_tiled` patched for the trace). It needs 129 KB of shared
memory (one CTA per SM), 113 KB with Q staged first (two, if Mosaic's allocation fits).
Prediction: at B16 (one CTA per SM either way) staged faster than tiled if whole-row
fetches matter more than the conversion; at B32, staged with Q first within ±2 % of
tiled, staged without it slower (one CTA per SM).

Call 9's text:
Does the TMA fetch granularity move the bf16 decode's DRAM rate?

With the 128-byte swizzle each 256-byte K/V row (D128 bf16) is fetched as two 128-byte
halves 16 rows apart (the box runs over the rows of one 64-column tile, then the next);
Nsight Compute (call 8) has our kernel reading the same bytes, sectors and requests as
cuDNN at 86 % of DRAM peak against 89 %. If the split fetch is what costs, a 64-byte
swizzle (four 64-byte quarters per row, every decode tile) must be slower still, a 32-byte
one slower again. Prediction: 64 B 1-3 % slower than 128 B at B32; if it is within ±0.5 %,
fetch granularity is not the cause. Rows (interleaved rounds, host plans, kernel µs by the
device clock): swizzle 128 (the kernel's), 64, 32; cuDNN. The swizzle is patched into
`jattn.pallas.decode._tiled` for the trace only.

  PYTHONPATH=. python3 benchmarks/results/session17/staged_probe.py OUT_DIR
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
def staged(on):
  real = pd._staged, pd._ring_tiled
  if on:
    pd._staged, pd._ring_tiled = (lambda *a: True), (lambda *a: False)
  jax.clear_caches()
  try:
    yield
  finally:
    pd._staged, pd._ring_tiled = real


def main(out):
  res, timed = {}, []
  for B in (32, 16):
    wl = W.Workload(f"decode_gqa32x8_b{B}_s4096_d128_p16", "decode", B, 1, 4096, 32, 8, 128,
                    page_size=16)
    data = impls.Data(wl)
    args = []
    for p in data.paged:
      plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                               wl.num_kv_heads, wl.head_dim, split=False)
      args.append((p["q"], p["cache"], p["table"], p["kv_lens"], plan))
    rows, ref, hashes = [], None, set()
    for label, on, cfg in (("tiled", False, None), ("staged", True, None),
                           ("staged, Q first", True, pd.DecodeConfig(q_first=True))):
      with staged(on):
        fn = jax.jit(lambda q, c, t, kl, plan, cfg=cfg: pd.decode(
            q, c, t, kl, sm_scale=wl.sm_scale, variant=jattn.Variant(), plan=plan,
            config=cfg)[0])
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
      log(f"B{B} {label}: max |o - o_tiled| / max |o_tiled| = {err:.1e}")
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
  with open(f"{out}/staged_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
