"""Session 22, call 1: the bf16 decode reading whole 256-byte rows (`DecodeConfig.whole_rows`).

Session 17 measured that the finer the TMA fetches of a K/V row, the lower the decode's
DRAM rate (64-byte swizzle +4 % at B32), and that whole-row fetches won at one CTA per
SM when they went through a conversion (staged path, call 10) but lost at two CTAs per
SM to the conversion's cost (calls 10-11). With whole rows, each token's 256 bytes are
one box span ([tokens, 2, 64] from the cache viewed [P, ps, Nkv, 2, 64]) landing as the
[2 tokens, 64] tile wgmma reads (row 2t + h = half h of token t): no conversion, the same
shared memory. The products become S' = Q' K'^T with Q' rows h * 8 + g = half h of head
g, folded by one add per register pair (`_fold_halves`), and P' V' with P' zero off its
half: same FLOPs.

Prediction: outputs within bf16 rounding of the plain tiles (the fold sums the two halves'
partial dots in f32). If the fetch width is what separates us from cuDNN: B32 / B128
1-3 % faster, B16 (one CTA per SM) 2-5 % faster. If the TMA unit splits the box into the
same 128-byte requests either way: within ±1 %.

  PYTHONPATH=. python3 benchmarks/results/session22/whole_rows_probe.py OUT_DIR
"""

import json
import sys

import jax
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, device_span, log, more_rounds
from jattn.pallas import decode as pd


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
    rows, ref = [], None
    for label, on in (("tiles", False), ("whole rows", True)):
      cfg = pd.DecodeConfig(whole_rows=on)
      fn = jax.jit(lambda q, c, t, kl, plan, cfg=cfg: pd.decode(
          q, c, t, kl, sm_scale=wl.sm_scale, variant=jattn.Variant(), plan=plan,
          config=cfg)[0])
      try:
        comp = fn.lower(*args[0]).compile()
      except Exception as e:  # noqa: BLE001
        log(f"B{B} {label}: does not compile: {type(e).__name__}: {str(e)[:400]}")
        continue
      o = np.asarray(comp(*args[0]), np.float32)
      ref = o if ref is None else ref
      err = float(np.max(np.abs(o - ref)) / np.max(np.abs(ref)))
      log(f"B{B} {label}: max |o - o_tiles| / max |o_tiles| = {err:.1e}")
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
  with open(f"{out}/whole_rows_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
