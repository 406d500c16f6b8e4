"""Session 17, call 1: is the bf16 decode's gap to cuDNN in how its reads fall on DRAM?

In the paged cache [P, ps, Nkv, D] one CTA (one kv head) reads 256-byte rows strided by
Nkv * 256 bytes; the other heads' CTAs read the rest of each row at other times. With one
kv head (GQA 32/1, B256: the same bytes, the same 256 CTAs and the same 64-row tiles) a
CTA reads each page's 4 KB contiguously. Rows (interleaved rounds, host plans; each also
by the device clock):

  gqa32x8 B32 S4096 p16   the harness's row        jattn, cuDNN
  gqa32x1 B256 S4096 p16  one kv head, same bytes  jattn, cuDNN
  gqa32x8 B32 S4096 p64   larger pages (one TMA copy of 64 rows per tile)  jattn, cuDNN

  PYTHONPATH=. python3 benchmarks/results/session17/layout_probe.py OUT_DIR
"""

import json
import sys

import jax
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, ceilings, device_span, log, more_rounds

SHAPES = (
    W.Workload("decode_gqa32x8_b32_s4096_d128_p16", "decode", 32, 1, 4096, 32, 8, 128,
               page_size=16),
    W.Workload("decode_gqa32x1_b256_s4096_d128_p16", "decode", 256, 1, 4096, 32, 1, 128,
               page_size=16),
    W.Workload("decode_gqa32x8_b32_s4096_d128_p64", "decode", 32, 1, 4096, 32, 8, 128,
               page_size=64),
)


def main(out):
  res, timed = {}, []
  ceil = ceilings()
  log("ceilings", {k: round(v, 1) for k, v in ceil.items()})
  f = jax.jit(lambda q, c, t, kl, plan: jattn.decode(q, c, t, kl, plan=plan,
                                                      implementation="pallas"))
  for wl in SHAPES:
    data = impls.Data(wl)
    args = []
    for p in data.paged:
      plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                               wl.num_kv_heads, wl.head_dim)
      assert not plan.split
      args.append((p["q"], p["cache"], p["table"], p["kv_lens"], plan))
    rows = [("jattn", f, args)]
    prep = impls.cudnn(wl, data)
    rows.append(("cudnn", prep.fn, prep.args))
    for label, fn, a in rows:
      key = f"{wl.name} {label}"
      t = bench(fn, a)
      span = device_span(fn, a)
      us = lambda x: None if x is None else round(x * 1e6, 2)
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                          span_us=us(span.get("span_s")), busy_us=us(span.get("busy_s")),
                          by_kernel_us={k: us(v) for k, v in span.get("by_kernel", {}).items()})
      timed.append((r, fn, a))
      log(f"r0 {key:50s} {t.median_s * 1e3:.4f} ms  span {r['span_us']} us")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    r["gbps"] = r["bytes"] / r["ms"] / 1e6
    busy = max(v for v in r["by_kernel_us"].values())
    r["kernel_gbps"] = r["bytes"] / busy / 1e3
    log(f"{key:50s} {r['ms']:.4f} ms {r['gbps']:6.0f} GB/s  largest kernel {busy} us "
        f"= {r['kernel_gbps']:6.0f} GB/s  rounds {', '.join(f'{x:.4f}' for x in r['ms_rounds'])}"
        f"  kernels {r['by_kernel_us']}")
  res["ceilings"] = ceil
  with open(f"{out}/layout_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
