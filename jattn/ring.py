"""Ring attention: sequence (context) parallel attention inside `jax.shard_map`.

The sequence is split over the n devices of mesh axis `axis_name`. Each device keeps its
query block and passes its key/value block around the ring with `ppermute`; at step j
device i attends to the block of device (i - j) mod n with the single-device
`jattn.attention` (whatever implementation the dispatcher picks, `return_lse=True`) and
folds the partial result in with the exact LSE merge (`jattn.merge_states`, in float32).
The next block's transfer is issued before the current block's compute, so the two can
overlap.

Layouts (causal). With contiguous blocks, device i's queries see nothing of the blocks of
devices after it, so device n-1 works n times as long as device 0. The default zig-zag
layout cuts the sequence into 2n chunks and gives device i chunks i and 2n-1-i (use
`zigzag` / `unzigzag` to reorder a global sequence). Then every step but the first is
exactly half the block pair: from an earlier device, all queries see the first visiting
chunk; from a later device, the last query chunk sees both visiting chunks. The first
step is plain causal attention of the local block on itself (local order preserves the
global order). Work that is masked out entirely is never computed.

Gradient: `jax.custom_vjp`. The backward runs the ring again: each step takes the VJP of
the same per-step attention with cotangents rescaled by the final lse
(do_j = w_j do, dlse_j = w_j (do . (o_j - o) + dlse), w_j = exp(lse_j - lse)), keeps dq
locally and sends dk/dv around the ring with their block, so after n hops they are home.
Memory stays at one visiting block, whatever n.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

LAYOUTS = ("zigzag", "contiguous")


def zigzag(x, n: int, axis: int = 1):
  """Reorder a global sequence so that splitting `axis` into n contiguous blocks gives
  device i the chunks i and 2n-1-i (of 2n equal chunks). Apply it to the global (unsharded)
  sequence, where the data is made."""
  chunks = jnp.split(x, 2 * n, axis=axis)
  return jnp.concatenate([c for i in range(n) for c in (chunks[i], chunks[2 * n - 1 - i])],
                         axis=axis)


def unzigzag(x, n: int, axis: int = 1):
  """Inverse of `zigzag`."""
  chunks = jnp.split(x, 2 * n, axis=axis)
  order = [None] * (2 * n)
  for i in range(n):
    order[i], order[2 * n - 1 - i] = chunks[2 * i], chunks[2 * i + 1]
  return jnp.concatenate(order, axis=axis)


@dataclasses.dataclass(frozen=True)
class _Config:
  axis_name: object
  causal: bool
  layout: str
  sm_scale: float
  soft_cap: Optional[float]
  implementation: Optional[str]


def ring_attention(q, k, v, *, axis_name, causal: bool = True, layout: str = "zigzag",
                   sm_scale: Optional[float] = None, logits_soft_cap: Optional[float] = None,
                   return_lse: bool = False, implementation: Optional[str] = None):
  """Attention over a sequence split across mesh axis `axis_name`; call inside
  `jax.shard_map`.

  q [B,Tl,Nq,D], k [B,Tl,Nkv,D], v [B,Tl,Nkv,Dv]: this device's block of the global
  sequence, laid out as `layout` says ("zigzag": chunks i and 2n-1-i, see `zigzag`;
  "contiguous": block i). Returns o [B,Tl,Nq,Dv] (q's dtype) for the local queries, and
  with `return_lse` the float32 lse [B,Tl,Nq]. Causal masking uses global positions.
  Differentiable in q, k, v. Position-dependent variants (ALiBi, sliding windows) are not
  offered: each step would need the global positions of both blocks.

  >>> o = jax.shard_map(functools.partial(jattn.ring_attention, axis_name="sp"),
  ...                   mesh=mesh, in_specs=P(None, "sp"), out_specs=P(None, "sp"))(q, k, v)
  """
  if layout not in LAYOUTS:
    raise ValueError(f"jattn.ring_attention: layout must be one of {LAYOUTS}, got {layout!r}")
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError("jattn.ring_attention: q, k, v must be [B, T_local, heads, dim], got "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if causal and q.shape[1] != k.shape[1]:
    raise ValueError("jattn.ring_attention: causal ring attention needs equal local query "
                     f"and key blocks, got {q.shape[1]} and {k.shape[1]}")
  if causal and layout == "zigzag" and q.shape[1] % 2:
    raise ValueError("jattn.ring_attention: the zig-zag layout needs an even local block "
                     f"(two chunks), got {q.shape[1]}")
  scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
  cfg = _Config(axis_name, causal, layout, scale, logits_soft_cap, implementation)
  o, lse = _ring(cfg, q, k, v)
  return (o, lse) if return_lse else o


# ----------------------------------------------------------------------------- one step

def _attend(cfg, q, k, v, causal):
  import jattn  # local: jattn imports this module
  o, lse = jattn.attention(q, k, v, causal=causal, sm_scale=cfg.sm_scale,
                           logits_soft_cap=cfg.soft_cap, return_lse=True,
                           implementation=cfg.implementation)
  return o.astype(jnp.float32), lse


def _varying_like(xs, *refs):
  """Mark xs as varying over the manual mesh axes the refs vary over (so that the
  branches of a switch agree on their types inside shard_map)."""
  def vma(x):
    mat = getattr(jax.typeof(x), "manual_axis_type", None)
    return set(mat.varying) if mat is not None else set()

  want = set().union(*(vma(r) for r in refs))

  def cast(x):
    missing = tuple(sorted(want - vma(x)))
    return lax.pcast(x, missing, to="varying") if missing else x
  return jax.tree.map(cast, xs)


def _empty(q, k, v):
  shape = q.shape[:3]
  out = (jnp.zeros(shape + v.shape[3:], jnp.float32), jnp.full(shape, -jnp.inf, jnp.float32))
  return _varying_like(out, q, k, v)


def _pad_front(o, lse, rows):
  zo, zl = jnp.zeros_like(o[:, :rows]), jnp.full_like(lse[:, :rows], -jnp.inf)
  return jnp.concatenate([zo, o], 1), jnp.concatenate([zl, lse], 1)


def _branches(cfg, j):
  """The per-step attention of step j as (selector, [fn(q, k, v) -> (o, lse)]): the
  selector (traced: it depends on the device) picks the function."""
  if not cfg.causal:
    return 0, [lambda q, k, v: _attend(cfg, q, k, v, False)]
  if isinstance(j, int) and j == 0:
    return 0, [lambda q, k, v: _attend(cfg, q, k, v, True)]
  n = lax.axis_size(cfg.axis_name)
  me = lax.axis_index(cfg.axis_name)
  src = (me - j) % n
  earlier = (src < me).astype(jnp.int32)   # 1: the visiting block precedes ours

  if cfg.layout == "contiguous":
    def later(q, k, v):   # a later block: masked out entirely
      return _empty(q, k, v)
    return earlier, [later, lambda q, k, v: _attend(cfg, q, k, v, False)]

  def later(q, k, v):     # our last chunk sees both visiting chunks
    c = q.shape[1] // 2
    return _pad_front(*_attend(cfg, q[:, c:], k, v, False), c)

  def before(q, k, v):    # all our queries see the first visiting chunk only
    c = k.shape[1] // 2
    return _attend(cfg, q, k[:, :c], v[:, :c], False)

  return earlier, [later, before]


def _step(cfg, j, q, k, v):
  sel, fns = _branches(cfg, j)
  if len(fns) == 1:
    return fns[0](q, k, v)
  return lax.switch(sel, fns, q, k, v)


def _step_vjp(cfg, j, q, k, v, do, o, lse, dlse):
  """Gradient contributions of step j given the final o, lse and their cotangents."""
  sel, fns = _branches(cfg, j)

  def grad_of(fn):
    def g(q, k, v):
      (oj, lj), pull = jax.vjp(fn, q, k, v)
      w = jnp.where(jnp.isfinite(lj), jnp.exp(lj - jnp.where(jnp.isfinite(lse), lse, 0)), 0.0)
      d_lj = w * (jnp.sum(do * (oj - o), axis=-1) + dlse)
      dq, dk, dv = pull((w[..., None] * do, d_lj))
      return dq.astype(jnp.float32), dk.astype(jnp.float32), dv.astype(jnp.float32)
    return g

  grads = [grad_of(fn) for fn in fns]
  if len(grads) == 1:
    return grads[0](q, k, v)
  return lax.switch(sel, grads, q, k, v)


# ----------------------------------------------------------------------------- ring

def _shift(cfg, xs):
  """Send to the next device on the ring (device i receives from i - 1)."""
  n = lax.axis_size(cfg.axis_name)
  perm = [(i, (i + 1) % n) for i in range(n)]
  return jax.tree.map(lambda x: lax.ppermute(x, cfg.axis_name, perm), xs)


def _forward(cfg, q, k, v):
  import jattn
  n = lax.axis_size(cfg.axis_name)
  nxt = _shift(cfg, (k, v)) if n > 1 else None      # in flight during step 0
  o, lse = _step(cfg, 0, q, k, v)

  def visit(j, kv, o, lse):
    oj, lj = _step(cfg, j, q, *kv)
    return jattn.merge_states(o, lse, oj, lj)

  def body(j, carry):
    kv, o, lse = carry
    after = _shift(cfg, kv)
    o, lse = visit(j, kv, o, lse)
    return after, o, lse

  if n > 1:
    nxt, o, lse = lax.fori_loop(1, n - 1, body, (nxt, o, lse))
    o, lse = visit(n - 1, nxt, o, lse)
  return o, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(cfg, q, k, v):
  o, lse = _forward(cfg, q, k, v)
  return o.astype(q.dtype), lse


def _ring_fwd(cfg, q, k, v):
  o, lse = _forward(cfg, q, k, v)
  return (o.astype(q.dtype), lse), (q, k, v, o, lse)


def _ring_bwd(cfg, res, cts):
  q, k, v, o, lse = res
  do, dlse = cts
  do = do.astype(jnp.float32)
  dlse = jnp.zeros_like(lse) if dlse is None else dlse.astype(jnp.float32)
  n = lax.axis_size(cfg.axis_name)
  nxt = _shift(cfg, (k, v)) if n > 1 else None
  dq, dk, dv = _step_vjp(cfg, 0, q, k, v, do, o, lse, dlse)

  def visit(j, kv, dkv, dq):
    gq, gk, gv = _step_vjp(cfg, j, q, *kv, do, o, lse, dlse)
    return (dkv[0] + gk, dkv[1] + gv), dq + gq

  def body(j, carry):
    kv, dkv, dq = carry
    after = _shift(cfg, kv)
    dkv, dq = visit(j, kv, _shift(cfg, dkv), dq)   # dk/dv travel with their block
    return after, dkv, dq

  if n > 1:
    nxt, (dk, dv), dq = lax.fori_loop(1, n - 1, body, (nxt, (dk, dv), dq))
    (dk, dv), dq = visit(n - 1, nxt, _shift(cfg, (dk, dv)), dq)
    dk, dv = _shift(cfg, (dk, dv))          # the last hop brings dk/dv home
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_ring.defvjp(_ring_fwd, _ring_bwd)
