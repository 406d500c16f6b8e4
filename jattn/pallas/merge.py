"""merge_states: exact merge of two partial attentions, a Pallas Mosaic GPU kernel.

o_a, o_b [..., H, Dv] (bf16/fp16/fp32) and lse_a, lse_b [..., H] (float32, natural log)
are flattened to rows. One CTA merges 64 rows: both tiles arrive by TMA, then

  m = max(lse_a, lse_b), w_x = exp(lse_x - m), o = (w_a o_a + w_b o_b) / (w_a + w_b),
  lse = m + log(w_a + w_b)

with rows whose two lse are -inf (or NaN) giving o = 0, lse = -inf (as `jattn.reference`). The
rows are padded to at least one tile and to a multiple of 8 (TMA's row tiling rejects other
counts); past that the last tile may run beyond the rows: TMA fills the missing rows with
zeros on load and drops them on store.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

ROWS = 64
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def supports(spec) -> Optional[str]:
  if spec.op != "merge_states":
    return f"serves merge_states, not {spec.op}"
  if jnp.dtype(spec.dtype) not in _DTYPES:
    return f"o must be bf16, fp16 or fp32, got {jnp.dtype(spec.dtype).name}"
  d = spec.v_head_dim
  if d % 8 or d * jnp.dtype(spec.dtype).itemsize % 16 or d > 512:
    return f"head dim must be a multiple of 8 (16 bytes) and at most 512, got {d}"
  return None


def _kernel(oa_ref, la_ref, ob_ref, lb_ref, o_ref, lse_ref,
            oa_s, ob_s, la_s, lb_s, o_s, l_s, bar):
  rows = pl.ds(lax.axis_index("tile") * ROWS, ROWS)
  for src, dst in ((oa_ref, oa_s), (ob_ref, ob_s), (la_ref, la_s), (lb_ref, lb_s)):
    plgpu.copy_gmem_to_smem(src.at[rows], dst, bar)
  plgpu.barrier_wait(bar)
  wgmma = plgpu.Layout.WGMMA
  oa = plgpu.load(oa_s, layout=wgmma, optimized=False).astype(jnp.float32)
  ob = plgpu.load(ob_s, layout=wgmma, optimized=False).astype(jnp.float32)
  la = plgpu.load(la_s, layout=wgmma.reduce(1))
  lb = plgpu.load(lb_s, layout=wgmma.reduce(1))
  m = jnp.maximum(la, lb)
  m = jnp.where(m == -jnp.inf, 0.0, m)
  wa, wb = jnp.exp(la - m), jnp.exp(lb - m)
  w = wa + wb
  ok = w > 0
  w_safe = jnp.where(ok, w, 1.0)
  bcast = functools.partial(lax.broadcast_in_dim, shape=oa.shape, broadcast_dimensions=[0])
  o = (oa * bcast(wa) + ob * bcast(wb)) * bcast(1.0 / w_safe)
  o_s[...] = jnp.where(bcast(ok), o, 0.0).astype(o_s.dtype)   # also for NaN lse
  l_s[...] = jnp.where(ok, m + jnp.log(w_safe), -jnp.inf)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(o_s, o_ref.at[rows])
  plgpu.copy_smem_to_gmem(l_s, lse_ref.at[rows])
  plgpu.wait_smem_to_gmem(0)


def merge_states(o_a, lse_a, o_b, lse_b, *, interpret=False):
  """Merge two partial attentions over disjoint keys; returns (o, lse) like the inputs."""
  shape, Dv = o_a.shape, o_a.shape[-1]
  N = max(1, lse_a.size)
  o_a, o_b = o_a.reshape(-1, Dv), o_b.reshape(-1, Dv)
  lse_a = lse_a.reshape(-1).astype(jnp.float32)
  lse_b = lse_b.reshape(-1).astype(jnp.float32)
  pad = max(ROWS - N, -N % 8)  # a tile's slices must fit; TMA wants rows % 8 == 0
  if pad:
    o_a, o_b = (jnp.pad(x, ((0, pad), (0, 0))) for x in (o_a, o_b))
    lse_a, lse_b = (jnp.pad(x, (0, pad), constant_values=-jnp.inf) for x in (lse_a, lse_b))
  n = o_a.shape[0]
  dt = o_a.dtype
  if interpret is True:
    interpret = plgpu.InterpretGPUParams()
  o, lse = plgpu.kernel(
      _kernel,
      out_type=(jax.ShapeDtypeStruct((n, Dv), dt), jax.ShapeDtypeStruct((n,), jnp.float32)),
      scratch_types=(plgpu.SMEM((ROWS, Dv), dt), plgpu.SMEM((ROWS, Dv), dt),
                     plgpu.SMEM((ROWS,), jnp.float32), plgpu.SMEM((ROWS,), jnp.float32),
                     plgpu.SMEM((ROWS, Dv), dt), plgpu.SMEM((ROWS,), jnp.float32),
                     plgpu.Barrier(num_arrivals=4)),
      grid=(pl.cdiv(n, ROWS),), grid_names=("tile",),
      interpret=interpret or None,
  )(o_a, lse_a, o_b, lse_b)
  if pad:
    o, lse = o[:N], lse[:N]
  return o.reshape(shape), lse.reshape(shape[:-1])
