"""Session 17, call 3: is the bf16 decode bound by the SMs' share of the stream or by
DRAM? At B32 (GQA 32/8, S4096) the 256 CTAs fill 256 of the H100's 264 two-per-SM slots;
8 SMs run one CTA. B33 fills all 264. If DRAM sets the pace, t(B33) / t(B32) = 33/32;
if the SMs do, B33 costs nearly nothing more. Same for B16 / B17 (one CTA per SM: 128 and
136 CTAs), and cuDNN beside each. Kernel time by the device clock.

  PYTHONPATH=. python3 benchmarks/results/session17/fill_probe.py OUT_DIR
"""

import json
import sys

import jax
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, device_span, log, more_rounds


def main(out):
  res, timed = {}, []
  f = jax.jit(lambda q, c, t, kl, plan: jattn.decode(q, c, t, kl, plan=plan,
                                                      implementation="pallas"))
  for B in (16, 17, 32, 33):
    wl = W.Workload(f"decode_gqa32x8_b{B}_s4096_d128_p16", "decode", B, 1, 4096, 32, 8, 128,
                    page_size=16)
    data = impls.Data(wl)
    args = []
    for p in data.paged:
      plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                               wl.num_kv_heads, wl.head_dim, split=False)
      args.append((p["q"], p["cache"], p["table"], p["kv_lens"], plan))
    prep = impls.cudnn(wl, data)
    for label, fn, a in (("jattn", f, args), ("cudnn", prep.fn, prep.args)):
      key = f"B{B} {label}"
      t = bench(fn, a)
      span = device_span(fn, a)
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                          kernel_us=round(max(span["by_kernel"].values()) * 1e6, 2))
      timed.append((r, fn, a))
      log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, 3, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    log(f"{key:12s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us "
        f"{r['bytes'] / r['kernel_us'] / 1e3:6.0f} GB/s")
  with open(f"{out}/fill_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
