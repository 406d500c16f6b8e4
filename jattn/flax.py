"""Flax integration: an NNX attention module on jattn and a drop-in `attention_fn`.

`attention_fn` (or `make_attention_fn(...)`) replaces flax's `dot_product_attention` in
`flax.nnx.MultiHeadAttention(attention_fn=...)` and
`flax.linen.MultiHeadDotProductAttention(attention_fn=...)`. Flax speaks in dense masks;
jattn speaks in causal / lengths / variants. The translation (never silently dropped):

  is_causal=True (nnx)      -> causal=True when T == S; flax's causal is top-left
                               (`tril(T, S)`), so for T != S a band variant with that
                               alignment is used instead of jattn's bottom-right causal.
  mask=jattn.flax.Mask(...) -> exactly those jattn terms (works under jit).
  a concrete bool mask      -> analysed on the host: if it equals "causal and/or valid
                               prefixes" it becomes causal=True + q_lengths/kv_lengths.
  any other bool mask, and  -> a `Variant` whose logits_mask reads the mask array at
  every traced mask            (batch, head, query row, key); only the XLA
                               implementation can read a dense array from a variant, so
                               these calls run on implementation="xla" unless you pass
                               one (`dense_masks="error"` raises instead).

Masks are boolean (flax's 0/1 float masks are compared with 0). Rows that see no key
return 0 in jattn, where flax's default returns the mean of V. Unsupported features raise:
`bias`, attention dropout, `sow_weights` (the weights are never materialised).
`precision` is accepted and not used (kernels pick their own accumulation: float32).

`Attention` is a GQA self-attention layer with RoPE, optional sliding window and
soft-cap, that runs dense (`__call__`), packed prefill and decode over a paged KV cache
that the caller passes in and gets back (`prefill`, `decode`), and dense-cache versions
on `jax.nn.dot_product_attention` used as the serving baseline (`prefill_dense`,
`decode_dense`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jattn
from jattn import variants as V

__all__ = ["Mask", "attention_fn", "make_attention_fn", "apply_rope", "Attention",
           "dense_mask_variant", "translate_mask"]

Impl = Union[None, str, Mapping[str, Optional[str]]]
JAX_NN = "jax.nn"  # implementation name for jax.nn.dot_product_attention (dense only)


def op_impl(implementation: Impl, op: str) -> Optional[str]:
  """`implementation` may be one name for every op or a mapping op -> name."""
  if implementation is None or isinstance(implementation, str):
    return implementation
  return implementation.get(op)


# ----------------------------------------------------------------------------- masks

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Mask:
  """An attention mask in jattn terms, to pass as flax's `mask=` argument.

  causal: bottom-right aligned (query t sees key s <= t + kv_len - q_len).
  q_lengths, kv_lengths: int32 [B] valid prefix lengths (padding); B is the product of
    the batch dims.
  sliding_window: int or (left, right), as in `jattn.attention`.
  variant: any extra `jattn.Variant`.
  A pytree, so it passes through jit. Not for flax's own decode=True cache (flax then
  combines the mask with a dense occupancy mask).
  """

  q_lengths: Any = None
  kv_lengths: Any = None
  variant: Optional[V.Variant] = None
  causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
  sliding_window: Any = dataclasses.field(default=None, metadata=dict(static=True))


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _top_left_causal(T: int, S: int) -> V.Variant:
  """flax/jax.nn causal (`tril(T, S)`: key s visible to row t iff s <= t) in jattn
  positions, where q_pos = S - T + t: kv_pos - q_pos <= T - S."""
  right = T - S

  def mask(ctx):
    return ctx.kv_pos - ctx.q_pos <= right

  return V.Variant(logits_mask=mask, band=(None, max(0, right)), name="causal_top_left")


def dense_mask_variant(mask, T: int, S: int) -> V.Variant:
  """A Variant that keeps exactly the True entries of a bool `mask` [Bm, Hm, T|1, S|1]
  (each of Bm, Hm either 1 or full). Only valid without q/kv lengths: the query row is
  recovered as t = q_pos - (S - T)."""
  Bm, Hm, Tm, Sm = mask.shape

  def keep(ctx):
    b = ctx.batch if Bm > 1 else 0
    h = ctx.head if Hm > 1 else 0
    t = ctx.q_pos - (S - T) if Tm > 1 else 0
    s = ctx.kv_pos if Sm > 1 else 0
    return mask[b, h, t, s]

  return V.Variant(logits_mask=keep, name="dense_mask")


def _lengths_from_mask(m: np.ndarray):
  """Candidate (q_lengths, kv_lengths) [B]: one past the last row / column that any
  entry keeps."""
  rows = m.any(axis=2)   # [B, T]
  cols = m.any(axis=1)   # [B, S]

  def last(a):
    n = a.shape[1]
    return np.where(a.any(1), n - np.argmax(a[:, ::-1], axis=1), 0).astype(np.int32)

  return last(rows), last(cols)


def _jattn_mask(T, S, q_len, kv_len, causal) -> np.ndarray:
  """The keep-mask jattn applies for these terms, [B, T, S] (see jattn.attention)."""
  t = np.arange(T)[None, :, None]
  s = np.arange(S)[None, None, :]
  ql, kl = q_len[:, None, None], kv_len[:, None, None]
  keep = (t < ql) & (s < kl)
  if causal:
    keep &= s <= t + kl - ql
  return keep


def translate_mask(mask, is_causal: bool, batch_shape: tuple, H: int, T: int, S: int):
  """Flax mask arguments -> jattn keyword arguments for `jattn.attention`.

  `batch_shape` is q's leading dims (flattened to B = prod(batch_shape) for jattn).
  Returns (kwargs, exact) where kwargs has causal / q_lengths / kv_lengths /
  sliding_window / variant and `exact` is False when the dense-array variant was needed.
  """
  B = int(np.prod(batch_shape))
  if isinstance(mask, Mask):
    kw = dict(causal=mask.causal, q_lengths=mask.q_lengths, kv_lengths=mask.kv_lengths,
              sliding_window=mask.sliding_window, variant=mask.variant)
    if is_causal:
      if T != S or mask.q_lengths is not None or mask.kv_lengths is not None:
        raise ValueError("jattn.flax: is_causal=True (flax's top-left causal) cannot be "
                         "combined with a jattn Mask that has lengths or T != S; put "
                         "causal=True in the Mask instead (bottom-right aligned)")
      kw["causal"] = True
    return kw, True
  if mask is None:
    if not is_causal:
      return {}, True
    if T == S:
      return dict(causal=True), True
    return dict(variant=_top_left_causal(T, S)), True

  m = jnp.asarray(mask)
  m = m if m.dtype == jnp.bool_ else m != 0
  nb = len(batch_shape)
  if m.ndim > nb + 3:
    raise ValueError(f"jattn.flax: mask of shape {m.shape} has more dims than "
                     f"[batch..., heads, q_len, kv_len] = {(*batch_shape, H, T, S)}")
  m = m.reshape((1,) * (nb + 3 - m.ndim) + m.shape)
  if any(d != 1 for d in m.shape[:nb]):  # flatten batch dims like q's
    m = jnp.broadcast_to(m, (*batch_shape, *m.shape[nb:])).reshape(B, *m.shape[nb:])
  else:
    m = m.reshape(1, *m.shape[nb:])
  if m.shape[1] not in (1, H) or m.shape[2] not in (1, T) or m.shape[3] not in (1, S):
    raise ValueError(f"jattn.flax: mask of shape {jnp.shape(mask)} does not broadcast to "
                     f"[batch..., heads, q_len, kv_len] = {(*batch_shape, H, T, S)}")
  if is_causal:
    m = m & jnp.tril(jnp.ones((T, S), bool))[None, None]

  if _is_concrete(m):
    full = np.broadcast_to(np.asarray(m), (B, m.shape[1], T, S))
    if m.shape[1] == 1 or (full == full[:, :1]).all():
      m3 = full[:, 0]
      q_len, kv_len = _lengths_from_mask(m3)
      for causal in (False, True):
        if np.array_equal(_jattn_mask(T, S, q_len, kv_len, causal), m3):
          kw = dict(causal=causal)
          if (q_len != T).any() or (kv_len != S).any():
            kw.update(q_lengths=jnp.asarray(q_len), kv_lengths=jnp.asarray(kv_len))
          return kw, True
  return dict(variant=dense_mask_variant(m, T, S)), False


# ----------------------------------------------------------------------------- attention_fn

def apply_rope(x, positions, theta: float = 10000.0):
  """Rotary position embedding (Llama's rotate-half layout) on the last dim.

  x [..., N, D] with positions int [...] (x.shape[:-2]); computed in float32, returned
  in x's dtype.
  """
  d = x.shape[-1]
  half = d // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / d)
  ang = jnp.asarray(positions, jnp.float32)[..., None, None] * freq
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  xf = x.astype(jnp.float32)
  x1, x2 = xf[..., :half], xf[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def make_attention_fn(*, implementation: Optional[str] = None, sm_scale=None,
                      sliding_window=None, logits_soft_cap=None, variant=None,
                      rope_theta: Optional[float] = None, dense_masks: str = "xla"):
  """An `attention_fn` for flax's multi-head attention modules that calls
  `jattn.attention`. Options are those of `jattn.attention`, plus:

  rope_theta: apply RoPE to q and k first, at `input_positions` (nnx's MHA forwards
    them) or 0..T-1 / 0..S-1.
  dense_masks: what to do with a mask that is not causal/lengths ("xla": run it as a
    dense-mask variant on the XLA implementation, or on `implementation` if given;
    "error": raise).
  """
  if dense_masks not in ("xla", "error"):
    raise ValueError(f"dense_masks must be 'xla' or 'error', got {dense_masks!r}")

  def attention_fn(query, key, value, bias=None, mask=None, broadcast_dropout=True,
                   dropout_rng=None, dropout_rate=0.0, deterministic=False, dtype=None,
                   precision=None, module=None, is_causal=False, input_positions=None,
                   force_fp32_for_softmax=True):
    if bias is not None:
      raise NotImplementedError("jattn.flax.attention_fn: a dense `bias` is not supported; "
                                "express it as a jattn.Variant logits_transform")
    if dropout_rate > 0.0 and not deterministic:
      raise NotImplementedError("jattn.flax.attention_fn: attention dropout is not "
                                "supported (use deterministic=True or dropout_rate=0)")
    if module is not None:
      raise NotImplementedError("jattn.flax.attention_fn: sow_weights needs the attention "
                                "weights, which jattn never materialises")
    if input_positions is not None and rope_theta is None:
      raise ValueError("jattn.flax.attention_fn: input_positions given but no RoPE "
                       "configured; use make_attention_fn(rope_theta=...)")
    if dtype is None:
      dtype = jnp.result_type(query, key, value)
    query, key, value = (x.astype(dtype) for x in (query, key, value))
    batch_shape = query.shape[:-3]
    if key.shape[:-3] != batch_shape or value.shape[:-3] != batch_shape:
      raise ValueError(f"jattn.flax.attention_fn: batch dims differ: q {query.shape}, "
                       f"k {key.shape}, v {value.shape}")
    T, H, D = query.shape[-3:]
    S = key.shape[-3]
    B = int(np.prod(batch_shape))
    q = query.reshape(B, T, H, D)
    k = key.reshape(B, S, *key.shape[-2:])
    v = value.reshape(B, S, *value.shape[-2:])
    if rope_theta is not None:
      if input_positions is None:
        qp, kp = jnp.arange(T)[None], jnp.arange(S)[None]
      else:
        qp = kp = jnp.reshape(jnp.asarray(input_positions), (-1, T))
        if T != S:
          raise ValueError("jattn.flax.attention_fn: input_positions need q_len == kv_len")
      q = apply_rope(q, jnp.broadcast_to(qp, (B, T)), rope_theta)
      k = apply_rope(k, jnp.broadcast_to(kp, (B, S)), rope_theta)

    kw, exact = translate_mask(mask, bool(is_causal), batch_shape, H, T, S)
    impl = implementation
    if not exact:
      if dense_masks == "error":
        raise ValueError("jattn.flax.attention_fn: this mask is not causal / lengths "
                         "(or is traced under jit); pass jattn.flax.Mask(...) instead")
      impl = implementation or "xla"
    user_variant = kw.pop("variant", None)
    window = kw.pop("sliding_window", None)
    if window is not None and sliding_window is not None:
      raise ValueError("jattn.flax.attention_fn: sliding_window set twice")
    variants = [x for x in (variant, user_variant) if x is not None]
    out = jattn.attention(
        q, k, v, sm_scale=sm_scale, logits_soft_cap=logits_soft_cap,
        sliding_window=window if window is not None else sliding_window,
        variant=V.compose(*variants) if variants else None, implementation=impl, **kw)
    return out.reshape(*batch_shape, T, H, value.shape[-1])

  return attention_fn


attention_fn = make_attention_fn()
attention_fn.__doc__ = """Drop-in `attention_fn` for flax MHA modules that calls
`jattn.attention` (default options; see `make_attention_fn`)."""


# ----------------------------------------------------------------------------- module

def _dense_jax(q, k, v, *, causal, q_lengths, kv_lengths, sm_scale, sliding_window,
               logits_soft_cap, implementation, mask=None):
  """The same attention on `jax.nn.dot_product_attention` (the baseline and the check).
  Its causal is top-left aligned, which equals jattn's when q starts at position 0."""
  if logits_soft_cap is not None:
    raise NotImplementedError("jax.nn.dot_product_attention has no soft-cap; use a jattn "
                              "implementation (e.g. 'xla') for this model")
  window = None
  if sliding_window is not None:
    window = (sliding_window, 0) if isinstance(sliding_window, int) else tuple(sliding_window)
  impl = None if implementation == JAX_NN else implementation.split(":", 1)[1]
  return jax.nn.dot_product_attention(
      q, k, v, mask=mask, scale=sm_scale, is_causal=causal, query_seq_lengths=q_lengths,
      key_value_seq_lengths=kv_lengths, local_window_size=window, implementation=impl)


class Attention(nnx.Module):
  """GQA self-attention with RoPE on jattn.

  x [..., features] -> q [..., num_heads, head_dim], k/v [..., num_kv_heads, head_dim];
  RoPE (theta `rope_theta`, None = off) at the tokens' positions; optional
  `sliding_window` (int) and `logits_soft_cap`. The KV cache is passed in and returned:
  a `jattn.PagedKVCache` for `prefill`/`decode`, a dense (k, v) pair
  [B, max_len, Nkv, D] for the `*_dense` baseline methods.

  `implementation` on each call: None (jattn picks), a jattn name ("xla", "pallas", ...)
  or a mapping op -> name; "jax.nn" (or "jax.nn:cudnn") runs the dense forward on
  `jax.nn.dot_product_attention`.
  """

  def __init__(self, features: int, num_heads: int, num_kv_heads: Optional[int] = None,
               head_dim: Optional[int] = None, *, rope_theta: Optional[float] = 10000.0,
               sliding_window: Optional[int] = None,
               logits_soft_cap: Optional[float] = None, use_bias: bool = False,
               dtype=None, param_dtype=jnp.float32,
               kernel_init=nnx.initializers.lecun_normal(), rngs: nnx.Rngs):
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    head_dim = features // num_heads if head_dim is None else head_dim
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                       f"({num_kv_heads})")
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.rope_theta = rope_theta
    self.sliding_window = sliding_window
    self.logits_soft_cap = logits_soft_cap

    def linear(n_in, n_out):
      return nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=dtype,
                        param_dtype=param_dtype, kernel_init=kernel_init, rngs=rngs)

    self.q_proj = linear(features, num_heads * head_dim)
    self.k_proj = linear(features, num_kv_heads * head_dim)
    self.v_proj = linear(features, num_kv_heads * head_dim)
    self.o_proj = linear(num_heads * head_dim, features)

  def project(self, x, positions):
    """x [..., F], positions int [...] -> q [..., Nq, D], k, v [..., Nkv, D] (RoPE'd)."""
    lead = x.shape[:-1]
    q = self.q_proj(x).reshape(*lead, self.num_heads, self.head_dim)
    k = self.k_proj(x).reshape(*lead, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(*lead, self.num_kv_heads, self.head_dim)
    if self.rope_theta is not None:
      q = apply_rope(q, positions, self.rope_theta)
      k = apply_rope(k, positions, self.rope_theta)
    return q, k, v

  def _out(self, o):
    return self.o_proj(o.reshape(*o.shape[:-2], self.num_heads * self.head_dim))

  def _opts(self):
    return dict(sliding_window=self.sliding_window, logits_soft_cap=self.logits_soft_cap)

  def __call__(self, x, positions=None, *, lengths=None, causal: bool = True,
               implementation: Impl = None):
    """Dense self-attention. x [B, T, F]; positions [B, T] (default 0..T-1);
    `lengths` int32 [B] marks padding (rows past it return 0 in jattn)."""
    B, T = x.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    q, k, v = self.project(x, positions)
    impl = op_impl(implementation, "attention")
    if impl is not None and impl.startswith(JAX_NN):
      o = _dense_jax(q, k, v, causal=causal, q_lengths=lengths, kv_lengths=lengths,
                     sm_scale=None, implementation=impl, **self._opts())
    else:
      o = jattn.attention(q, k, v, causal=causal, q_lengths=lengths, kv_lengths=lengths,
                          implementation=impl, **self._opts())
    return self._out(o)

  def prefill(self, x, positions, cache, page_table, seq_ids, kv_lens, q_offsets, *,
              implementation: Impl = None):
    """Packed prefill / append over the paged cache.

    x [Tq, F] packed tokens; token i belongs to sequence seq_ids[i] (-1: padding) at
    positions[i]; sequence b owns rows q_offsets[b]:q_offsets[b+1], the last tokens of
    its kv_lens[b]. K/V are appended to `cache` first. Returns (y [Tq, F], cache).
    """
    q, k, v = self.project(x, positions)
    cache = jattn.append_kv(cache, k, v, page_table, seq_ids, positions,
                            implementation=op_impl(implementation, "append_kv"))
    o = jattn.prefill(q, cache, page_table, kv_lens, q_offsets,
                      implementation=op_impl(implementation, "prefill"), **self._opts())
    return self._out(o), cache

  def decode(self, x, cache, page_table, kv_lens, *, plan=None,
             implementation: Impl = None):
    """One token per sequence. x [B, F] is the token at position kv_lens[b] - 1;
    sequences with kv_lens[b] == 0 are idle (nothing written, output 0). Its K/V are
    appended, then it attends to the cache. Returns (y [B, F], cache)."""
    B = x.shape[0]
    positions = jnp.maximum(kv_lens - 1, 0)
    seq_ids = jnp.where(kv_lens > 0, jnp.arange(B, dtype=jnp.int32), -1)
    q, k, v = self.project(x, positions)
    cache = jattn.append_kv(cache, k, v, page_table, seq_ids, positions,
                            implementation=op_impl(implementation, "append_kv"))
    kw = {} if plan is None else dict(plan=plan)
    o = jattn.decode(q, cache, page_table, kv_lens,
                     implementation=op_impl(implementation, "decode"), **kw, **self._opts())
    return self._out(o), cache

  def prefill_dense(self, x, lengths, kv, slots, *, implementation: str = JAX_NN):
    """Baseline prefill of fresh prompts on jax.nn.dot_product_attention.
    x [N, T, F] padded prompts (positions 0..T-1), lengths [N]; their K/V are written
    to rows `slots` [N] (out of range: dropped) of the dense cache kv = (k, v)
    [B, max_len, Nkv, D]. Returns (y [N, T, F], kv)."""
    N, T = x.shape[:2]
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (N, T))
    q, k, v = self.project(x, pos)
    L = jnp.maximum(lengths, 1)
    o = _dense_jax(q, k, v, causal=True, q_lengths=L, kv_lengths=L, sm_scale=None,
                   implementation=implementation, **self._opts())
    kc, vc = kv
    kc = kc.at[slots[:, None], pos].set(k.astype(kc.dtype), mode="drop")
    vc = vc.at[slots[:, None], pos].set(v.astype(vc.dtype), mode="drop")
    return self._out(o), (kc, vc)

  def decode_dense(self, x, kv, kv_lens, *, implementation: str = JAX_NN):
    """Baseline decode on jax.nn.dot_product_attention over a dense cache
    kv = (k, v) [B, max_len, Nkv, D]; x [B, F] at position kv_lens[b] - 1."""
    B = x.shape[0]
    kc, vc = kv
    positions = jnp.maximum(kv_lens - 1, 0)
    rows = jnp.where(kv_lens > 0, jnp.arange(B), B)
    q, k, v = self.project(x, positions)
    kc = kc.at[rows, positions].set(k.astype(kc.dtype), mode="drop")
    vc = vc.at[rows, positions].set(v.astype(vc.dtype), mode="drop")
    mask = None
    if self.sliding_window is not None:  # jax.nn's window is top-left aligned: spell it out
      s = jnp.arange(kc.shape[1])[None, :]
      mask = (s >= positions[:, None] - self.sliding_window)[:, None, None, :]
    o = _dense_jax(q[:, None], kc.astype(q.dtype), vc.astype(q.dtype), causal=False,
                   q_lengths=None, kv_lengths=jnp.maximum(kv_lens, 1), sm_scale=None,
                   sliding_window=None, logits_soft_cap=self.logits_soft_cap,
                   implementation=implementation, mask=mask)
    return self._out(o[:, 0]), (kc, vc)
