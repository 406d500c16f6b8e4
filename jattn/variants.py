"""Composable attention variants: plain jnp functions traced into every kernel.

A `Variant` holds up to four functions. Every implementation (the XLA reference and
each Pallas kernel) calls them on whatever tile it holds, so they must be elementwise
jnp code that broadcasts:

  query_transform(q, ctx)     q: [..., D]   before the q.k product (e.g. RoPE)
  key_transform(k, ctx)       k: [..., D]   before the q.k product
  logits_transform(s, ctx)    s: float32, already multiplied by sm_scale
  logits_mask(ctx) -> bool    True keeps the key; False removes it (weight 0)

`ctx` is a `Context` of int32 arrays that broadcast against the tile:
  q_pos   absolute position of the query in its sequence (kv_len - q_len + t);
          None in key_transform
  kv_pos  absolute position of the key; None in query_transform
  head    query head (kv head for key_transform)
  batch   sequence index
  params  per-query-head parameters (`Variant.params`), already gathered at `head`;
          empty in key_transform (a key serves every query head of its group)

For `query_transform`/`key_transform` the arrays broadcast against `x[..., :1]` (one
trailing 1); for `logits_transform`/`logits_mask` against the logits tile. The reference
uses logits laid out [B, Nq, T, S]; kernels use their own tiles, which is why functions
must only broadcast, never index or reshape. A function that closes over an array (a
lookup table, a document-id vector) works on the XLA implementation only: the kernels
find that by tracing it on a tile (`kernel_trace_reason`) and pass the call on.

`band = (left, right)` says the mask is known to be contained in the band
`q_pos - left <= kv_pos <= q_pos + right` (None = unbounded side). Kernels use it to skip
tiles that lie wholly outside; the mask itself is still applied elementwise, so a band
never changes results, only work. `causal()` and `sliding_window()` set it.

The final logits are `logits_transform(sm_scale * q'.k')` where masked; the output is
softmax(final logits) @ v, with rows that see no key returning 0 and lse -inf.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jattn.memo import IdentityMemo

__all__ = ["Context", "Variant", "compose", "causal", "sliding_window", "soft_cap", "alibi"]

Band = Optional[tuple[Optional[int], Optional[int]]]


@dataclasses.dataclass(frozen=True)
class Context:
  """Positions and indices a variant function may read (see module docstring)."""

  q_pos: Any
  kv_pos: Any
  head: Any
  batch: Any
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Variant:
  """A composable attention variant. `params` values are arrays of shape [Nq] (per query
  head); they are pytree leaves, so a Variant may be passed through `jax.jit`."""

  query_transform: Optional[Callable] = None
  key_transform: Optional[Callable] = None
  logits_transform: Optional[Callable] = None
  logits_mask: Optional[Callable] = None
  params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  band: Band = None
  name: str = "custom"

  def tree_flatten(self):
    keys = tuple(sorted(self.params))
    aux = (self.query_transform, self.key_transform, self.logits_transform,
           self.logits_mask, keys, self.band, self.name)
    return tuple(self.params[k] for k in keys), aux

  @classmethod
  def tree_unflatten(cls, aux, children):
    qt, kt, lt, lm, keys, band, name = aux
    return cls(qt, kt, lt, lm, dict(zip(keys, children)), band, name)

  @property
  def is_identity(self) -> bool:
    return (self.query_transform is None and self.key_transform is None
            and self.logits_transform is None and self.logits_mask is None)

  @property
  def has_custom_mask(self) -> bool:
    """True when the mask is more than the band (kernels must evaluate it per tile)."""
    return self.logits_mask is not None and not getattr(self.logits_mask, "_is_band_mask", False)

  def __repr__(self):
    parts = [self.name]
    if self.band is not None:
      parts.append(f"band={self.band}")
    if self.params:
      parts.append(f"params={sorted(self.params)}")
    return f"Variant({', '.join(parts)})"


TRACE_TILE = (64, 64)   # the logits tile the kernel check traces a variant on
_TRACED = IdentityMemo(64)   # (fn; function name, head_dim, params) -> reason


def _kernel_safe(f):
  """Mark a built-in variant function as traceable by the kernels (scalars only), so the
  dispatch-time check does not trace it; a chain of such functions is one too."""
  f._kernel_safe = True
  return f


def _dtype_name(x) -> str:
  """x's dtype without copying it to the device (arrays, tracers, numpy and Python scalars)."""
  return str(x.dtype if hasattr(x, "dtype") else np.result_type(x))


def kernel_trace_reason(variant: Optional["Variant"], head_dim: int) -> Optional[str]:
  """None if every function of `variant` traces on a kernel tile without closing over an
  array (kernels can capture scalars only); else why not. Each function is traced on
  abstract tiles shaped as a kernel holds them (logits [64, 64]; q and k [64, head_dim]).
  This runs at every dispatch, so built-ins (`_kernel_safe`) are skipped and a user
  function's answer is kept (by identity, for the last few)."""
  if variant is None or variant.is_identity:
    return None
  row = (TRACE_TILE[0], head_dim)
  # name -> (tile of x or None, shape of ctx, has q_pos, has kv_pos, has params)
  calls = (("query_transform", row, row, True, False, True),
           ("key_transform", row, row, False, True, False),
           ("logits_transform", TRACE_TILE, TRACE_TILE, True, True, True),
           ("logits_mask", None, TRACE_TILE, True, True, True))
  for name, x_shape, shape, has_q, has_kv, has_params in calls:
    fn = getattr(variant, name)
    if fn is None or getattr(fn, "_kernel_safe", False):
      continue
    key = (name, head_dim, tuple(sorted((k, _dtype_name(p))
                                        for k, p in variant.params.items())))
    why = _TRACED.get((fn,), key, lambda: _trace_reason(
        variant.name, name, fn, x_shape, shape, has_q, has_kv,
        variant.params if has_params else {}))
    if why is not None:
      return why
  return None


def _trace_reason(variant_name, name, fn, x_shape, shape, has_q, has_kv, params):
  """Why the variant function `name` cannot go into a kernel, or None: `fn` traced on
  abstract tiles (x: `x_shape` or none; ctx arrays: `shape`) must close over no array."""
  i32 = jax.ShapeDtypeStruct(shape, jnp.int32)
  params = {k: jax.ShapeDtypeStruct(shape, jnp.asarray(p).dtype) for k, p in params.items()}

  def call(x, q_pos, kv_pos, head, batch, params):
    ctx = Context(q_pos=q_pos, kv_pos=kv_pos, head=head, batch=batch, params=params)
    return fn(ctx) if x is None else fn(x, ctx)

  x = None if x_shape is None else jax.ShapeDtypeStruct(x_shape, jnp.float32)
  try:
    closed = jax.make_jaxpr(call)(x, i32 if has_q else None, i32 if has_kv else None,
                                  i32, i32, params)
  except Exception as e:  # noqa: BLE001  (any failure to trace is the reason)
    return (f"variant {variant_name}: {name} does not trace on a kernel tile "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")[:300]
  arrays = [tuple(jnp.shape(c)) for c in closed.consts if jnp.size(c) > 1]
  if arrays:
    return (f"variant {variant_name}: {name} closes over arrays of shapes {arrays} "
            "(kernels capture scalars only; per-head values go in Variant.params)")
  return None


def _chain(fs):
  fs = [f for f in fs if f is not None]
  if not fs:
    return None
  if len(fs) == 1:
    return fs[0]

  def chained(x, ctx):
    for f in fs:
      x = f(x, ctx)
    return x

  chained._kernel_safe = all(getattr(f, "_kernel_safe", False) for f in fs)
  return chained


def _all_masks(ms):
  ms = [m for m in ms if m is not None]
  if not ms:
    return None
  if len(ms) == 1:
    return ms[0]

  def mask(ctx):
    keep = ms[0](ctx)
    for m in ms[1:]:
      keep = jnp.logical_and(keep, m(ctx))
    return keep

  mask._is_band_mask = all(getattr(m, "_is_band_mask", False) for m in ms)
  mask._kernel_safe = all(getattr(m, "_kernel_safe", False) for m in ms)
  return mask


def _intersect(a: Band, b: Band) -> Band:
  if a is None:
    return b
  if b is None:
    return a

  def tighter(x, y):
    if x is None:
      return y
    if y is None:
      return x
    return min(x, y)

  return (tighter(a[0], b[0]), tighter(a[1], b[1]))


def compose(*variants: Optional[Variant]) -> Variant:
  """Chain variants left to right: transforms apply in order, masks are AND-ed, bands
  intersect. `params` names must not clash."""
  vs = [v for v in variants if v is not None]
  if len(vs) == 1:
    return vs[0]
  params: dict[str, Any] = {}
  band: Band = None
  for v in vs:
    for k, val in v.params.items():
      if k in params:
        raise ValueError(f"compose: two variants define params[{k!r}]")
      params[k] = val
    band = _intersect(band, v.band)
  return Variant(
      query_transform=_chain([v.query_transform for v in vs]),
      key_transform=_chain([v.key_transform for v in vs]),
      logits_transform=_chain([v.logits_transform for v in vs]),
      logits_mask=_all_masks([v.logits_mask for v in vs]),
      params=params,
      band=band,
      name="+".join(v.name for v in vs) if vs else "identity",
  )


def _band_mask(left: Optional[int], right: Optional[int]):
  def mask(ctx):
    d = ctx.kv_pos - ctx.q_pos
    keep = jnp.ones(jnp.broadcast_shapes(jnp.shape(d)), dtype=bool)
    if left is not None:
      keep = jnp.logical_and(keep, d >= -left)
    if right is not None:
      keep = jnp.logical_and(keep, d <= right)
    return keep

  mask._is_band_mask = True
  return _kernel_safe(mask)


def causal() -> Variant:
  """Key s is visible to query t iff kv_pos <= q_pos (bottom-right aligned)."""
  return Variant(logits_mask=_band_mask(None, 0), band=(None, 0), name="causal")


def sliding_window(left: int, right: int = 0) -> Variant:
  """Keep keys with q_pos - left <= kv_pos <= q_pos + right."""
  left, right = int(left), int(right)
  if left < 0 or right < 0:
    raise ValueError(f"sliding_window: left and right must be >= 0, got ({left}, {right})")
  return Variant(logits_mask=_band_mask(left, right), band=(left, right),
                 name=f"window({left},{right})")


def soft_cap(cap: float) -> Variant:
  """logits = cap * tanh(logits / cap) (Gemma-2 / Grok style)."""
  cap = float(cap)
  if not cap > 0:
    raise ValueError(f"soft_cap: cap must be > 0, got {cap}")

  @_kernel_safe
  def transform(s, ctx):
    return cap * jnp.tanh(s / cap)

  return Variant(logits_transform=transform, name=f"soft_cap({cap:g})")


def alibi(slopes) -> Variant:
  """ALiBi: logits += slopes[head] * (kv_pos - q_pos); `slopes` float32 [Nq]."""
  slopes = jnp.asarray(slopes, jnp.float32)
  if slopes.ndim != 1:
    raise ValueError(f"alibi: slopes must be 1-D [num_q_heads], got shape {slopes.shape}")

  @_kernel_safe
  def transform(s, ctx):
    return s + ctx.params["alibi_slopes"] * (ctx.kv_pos - ctx.q_pos).astype(jnp.float32)

  return Variant(logits_transform=transform, params={"alibi_slopes": slopes}, name="alibi")


def alibi_slopes(num_heads: int):
  """The standard ALiBi slopes (Press et al.) for `num_heads` heads, float32 [num_heads]."""
  import math
  n = 2 ** math.floor(math.log2(num_heads))
  base = [2 ** (-8 * (i + 1) / n) for i in range(n)]
  extra = [2 ** (-4 * (2 * i + 1) / n) for i in range(num_heads - n)]
  return jnp.asarray(base + extra, jnp.float32)
