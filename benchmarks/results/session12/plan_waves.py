"""Session 12, calls 12-13: the host plan's `waves` (and `min_unit_keys`) on the harness's
skewed-lengths decode and on more split shapes, interleaved rounds in one process.
Call 12: CONFIGS as below (`CALL` = 12); call 13: `waves=None` (the chooser) against 1
and 4, on four shapes.

  PYTHONPATH=. python3 benchmarks/results/session12/plan_waves.py OUT_DIR [13]
"""

import dataclasses
import json
import sys

import jax
import numpy as np

import jattn
from benchmarks import impls, workloads as W
from benchmarks.timing import bench, log, more_rounds

CONFIGS = {12: [dict(waves=w) for w in (1, 2, 3, 4, 6)] + [dict(waves=2, min_unit_keys=1024)],
           13: [dict(waves=None), dict(waves=1), dict(waves=4)]}


def main(out, call=12):
  base = next(w for w in W.STANDARD if w.name == "decode_skewed_lengths")
  shapes = [base,
            dataclasses.replace(base, name="skewed_b16_mean8192", batch=16, mean_len=8192),
            dataclasses.replace(base, name="b2_s32768", batch=2, skewed=False, mean_len=None)]
  if call == 13:
    shapes[1] = dataclasses.replace(base, name="mha_b1_s32768", batch=1, skewed=False,
                                    mean_len=None, num_q_heads=32, num_kv_heads=32)
  res, timed = {}, []
  f = jax.jit(lambda q, c, t, kl, plan: jattn.decode(q, c, t, kl, plan=plan,
                                                     implementation="pallas"))
  for wl in shapes:
    data = impls.Data(wl)
    for cfg in CONFIGS[call]:
      args = []
      for p in data.paged:
        plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                                 wl.num_kv_heads, wl.head_dim, **cfg)
        args.append((p["q"], p["cache"], p["table"], p["kv_lens"], plan))
      name = f"{wl.name} {cfg}"
      t = bench(f, args)
      row = res[name] = dict(ms_rounds=[t.median_s * 1e3], bytes=wl.bytes(),
                             ctas=int(args[0][4].work.shape[0]))
      timed.append((row, f, args))
      log(f"r0 {name:50s} {t.median_s * 1e3:.4f} ms")
  more_rounds(timed, 5, lambda fn, a: bench(fn, a).median_s * 1e3)
  for name, r in res.items():
    r["gbps"] = r["bytes"] / r["ms"] / 1e6
    log(f"{name:50s} {r['ms']:.4f} ms {r['gbps']:6.0f} GB/s  ctas {r['ctas']}  "
        f"rounds {', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/plan_waves.json", "w") as fh:
    json.dump(res, fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)
