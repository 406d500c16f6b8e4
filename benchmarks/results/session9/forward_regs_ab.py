"""The script behind forward_regs240_run13_h100.json (kept for reproduction, not part of
the benchmarks package). It needed a temporary switch in jattn/pallas/prefill.py, read
when a kernel is traced, in place of today's `regs = ...` line of `_fwd_kernel_body`:

  consumer: plgpu.set_max_registers(int(os.environ.get("JATTN_REGS", "232")), ...)
  producer: plgpu.set_max_registers(24 if os.environ.get("JATTN_REGS") == "240" else 40, ...)

Run on the GPU: PYTHONPATH=. python3 benchmarks/results/session9/forward_regs_ab.py
(5 interleaved rounds of the causal forward at five shapes, both splits)."""
import json
import os
import statistics

import jax
import jax.numpy as jnp

from benchmarks.prefill_probe import bench, rand
from jattn import variants as V
from jattn.pallas import prefill as P

shapes = [(4, 4096, 32, 32, 128), (4, 4096, 32, 32, 64), (4, 4096, 16, 16, 256),
          (4, 4096, 32, 8, 128), (1, 8192, 32, 32, 128)]
made = []
for shape in shapes:
  B, T, Nq, Nkv, D = shape
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (rand(kk, (B, T, n, D), jnp.bfloat16) for kk, n in zip(ks, (Nq, Nkv, Nkv)))
  for regs in ("232", "240"):
    os.environ["JATTN_REGS"] = regs   # read when the new function below is traced
    f = (lambda r: lambda q, k, v: P.attention(
        q, k, v, sm_scale=q.shape[-1] ** -0.5, variant=V.causal(), q_lengths=None,
        kv_lengths=None)[0])(regs)
    fn = jax.jit(f)
    made.append([f"B{B} T{T} Hq{Nq} Hkv{Nkv} D{D} regs{regs}", fn, (q, k, v),
                 [bench(fn, (q, k, v)) * 1e3]])
  os.environ["JATTN_REGS"] = "232"
for _ in range(4):
  for m in made:
    m[3].append(bench(m[1], m[2]) * 1e3)
res = {m[0]: dict(ms=statistics.median(m[3]), rounds=m[3]) for m in made}
json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, rows=res),
          open(os.environ.get("OUT", ".") + "/regs_probe.json", "w"), indent=1)
