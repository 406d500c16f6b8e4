"""Session 17, call 5: does the page shuffle cost the decode its last few per cent?
cuDNN's peer reads each sequence's K/V contiguously ([B, S, Nkv, D], gathered outside the
timed call); the harness's paged cache puts every 16-token page of a sequence at a random
place. Same cache, two page tables: the harness's shuffled one and the identity (sequence
b's pages in order, b after b - 1: the addresses cuDNN reads). Pages of 16 and 64; the
decode with this session's two changes (early K refill, P from registers).

  PYTHONPATH=. python3 benchmarks/results/session17/table_probe.py OUT_DIR
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, device_span, log, more_rounds


def main(out):
  res, timed = {}, []
  f = jax.jit(lambda q, c, t, kl, plan: jattn.decode(q, c, t, kl, plan=plan,
                                                      implementation="pallas"))
  for B, S, ps in ((32, 4096, 16), (32, 4096, 64), (128, 2048, 16)):
    wl = W.Workload(f"decode_gqa32x8_b{B}_s{S}_d128_p{ps}", "decode", B, 1, S, 32, 8, 128,
                    page_size=ps)
    data = impls.Data(wl)
    rows = []
    for label in ("shuffled", "identity"):
      args = []
      for p in data.paged:
        table = p["table"]
        if label == "identity":
          M = table.shape[1]
          assert p["cache"].k_pages.shape[0] >= B * M
          table = jnp.arange(B * M, dtype=jnp.int32).reshape(B, M)
        plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                                 wl.num_kv_heads, wl.head_dim, split=False)
        args.append((p["q"], p["cache"], table, p["kv_lens"], plan))
      rows.append((label, f, args))
    prep = impls.cudnn(wl, data)
    rows.append(("cudnn", prep.fn, prep.args))
    for label, fn, a in rows:
      key = f"B{B} p{ps} {label}"
      t = bench(fn, a)
      span = device_span(fn, a)
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                          kernel_us=round(max(span["by_kernel"].values()) * 1e6, 2))
      timed.append((r, fn, a))
      log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    log(f"{key:20s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us "
        f"{r['bytes'] / r['kernel_us'] / 1e3:6.0f} GB/s  rounds "
        f"{', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/table_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1])
