"""Pure-jnp implementation of every jattn op: the `"xla"` implementation and the oracle.

Every function here computes in `promote(dtype, float32)`: float32 for bf16/fp16/fp32
inputs (the XLA implementation) and float64 for float64 inputs (the test oracle, run
under `jax.enable_x64`). Layouts and semantics are those of the public API (`jattn.api`):

  dense   q [B,T,Nq,D], k [B,S,Nkv,D], v [B,S,Nkv,Dv]; query head h reads kv head
          h // (Nq // Nkv).
  paged   pages [P, page_size, Nkv, D]; sequence b's token s lives in page
          page_table[b, s // page_size] at slot s % page_size.
  packed  [tokens, heads, dim] with int32[B+1] offsets; sequence b owns rows
          offsets[b]:offsets[b+1]; rows past offsets[B] are padding.

The math, per (query row, head): s_j = logits_transform(sm_scale * q'.k'_j) for visible
keys j (mask = valid & variant mask), m = max s, l = sum exp(s - m), o = sum exp(s_j - m)
v_j / l, lse = m + log l. A row with no visible key gives o = 0, lse = -inf.

Packed ops (prefill, prefill_ragged) attend every query row to every packed key and mask
keys of other sequences: O(Tq * Tk) work, fine for an oracle and small batches.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jattn.variants import Context, Variant


def _acc_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _head_params(variant: Variant, shape):
  return {k: jnp.reshape(v, shape) for k, v in variant.params.items()}


def attend(q, k, v, *, q_pos, kv_pos, q_batch, kv_batch, q_valid, kv_valid,
           sm_scale: float, variant: Variant, out_dtype=None):
  """Core masked attention. q [B,T,Nq,D], k [B,S,Nkv,D], v [B,S,Nkv,Dv]; positions,
  batch ids and validity int32/bool [B,T] / [B,S]. Keys with kv_batch != q_batch are
  invisible. Returns (o [B,T,Nq,Dv] in out_dtype (default q.dtype), lse [B,T,Nq])."""
  B, T, Nq, D = q.shape
  _, S, Nkv, _ = k.shape
  G = Nq // Nkv
  acc = _acc_dtype(q.dtype)
  out_dtype = q.dtype if out_dtype is None else out_dtype
  qf, kf, vf = q.astype(acc), k.astype(acc), v.astype(acc)

  if variant.query_transform is not None:
    ctx = Context(q_pos=q_pos[:, :, None, None], kv_pos=None,
                  head=jnp.arange(Nq, dtype=jnp.int32)[None, None, :, None],
                  batch=q_batch[:, :, None, None],
                  params=_head_params(variant, (1, 1, Nq, 1)))
    qf = variant.query_transform(qf, ctx).astype(acc)
  if variant.key_transform is not None:
    ctx = Context(q_pos=None, kv_pos=kv_pos[:, :, None, None],
                  head=jnp.arange(Nkv, dtype=jnp.int32)[None, None, :, None],
                  batch=kv_batch[:, :, None, None], params={})
    kf = variant.key_transform(kf, ctx).astype(acc)

  qg = qf.reshape(B, T, Nkv, G, D)
  s = jnp.einsum("btkgd,bskd->bkgts", qg, kf, precision=jax.lax.Precision.HIGHEST)
  s = s.reshape(B, Nq, T, S) * jnp.asarray(sm_scale, acc)

  ctx = Context(q_pos=q_pos[:, None, :, None], kv_pos=kv_pos[:, None, None, :],
                head=jnp.arange(Nq, dtype=jnp.int32)[None, :, None, None],
                batch=q_batch[:, None, :, None],
                params=_head_params(variant, (1, Nq, 1, 1)))
  if variant.logits_transform is not None:
    s = variant.logits_transform(s, ctx).astype(acc)
  keep = (q_valid[:, None, :, None] & kv_valid[:, None, None, :]
          & (q_batch[:, None, :, None] == kv_batch[:, None, None, :]))
  if variant.logits_mask is not None:
    keep = keep & variant.logits_mask(ctx)
  keep = jnp.broadcast_to(keep, s.shape)

  s = jnp.where(keep, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  m_safe = jnp.where(jnp.isfinite(m), m, 0)
  p = jnp.where(keep, jnp.exp(s - m_safe), 0)
  l = jnp.sum(p, axis=-1, keepdims=True)
  pv = p.reshape(B, Nkv, G, T, S)
  o = jnp.einsum("bkgts,bskd->btkgd", pv, vf, precision=jax.lax.Precision.HIGHEST)
  o = o.reshape(B, T, Nq, -1)
  l_t = jnp.moveaxis(l[..., 0], 1, 2)  # [B,T,Nq]
  o = jnp.where(l_t[..., None] > 0, o / jnp.where(l_t > 0, l_t, 1)[..., None], 0)
  lse = jnp.where(l_t > 0, jnp.moveaxis(m_safe[..., 0], 1, 2) + jnp.log(l_t), -jnp.inf)
  return o.astype(out_dtype), lse.astype(jnp.promote_types(acc, jnp.float32))


def attention(q, k, v, *, sm_scale: float, variant: Variant,
              q_lengths=None, kv_lengths=None):
  """Dense attention. Bottom-right aligned: q_pos = kv_len - q_len + t. Rows t >= q_len
  and keys s >= kv_len are invalid. Returns (o, lse)."""
  B, T = q.shape[:2]
  S = k.shape[1]
  q_len = jnp.full((B,), T, jnp.int32) if q_lengths is None else jnp.clip(q_lengths, 0, T)
  kv_len = jnp.full((B,), S, jnp.int32) if kv_lengths is None else jnp.clip(kv_lengths, 0, S)
  t = jnp.arange(T, dtype=jnp.int32)[None, :]
  s = jnp.arange(S, dtype=jnp.int32)[None, :]
  q_pos = (kv_len - q_len)[:, None] + t
  batch = jnp.arange(B, dtype=jnp.int32)[:, None]
  return attend(q, k, v, q_pos=q_pos, kv_pos=jnp.broadcast_to(s, (B, S)),
                q_batch=jnp.broadcast_to(batch, (B, T)), kv_batch=jnp.broadcast_to(batch, (B, S)),
                q_valid=t < q_len[:, None], kv_valid=s < kv_len[:, None],
                sm_scale=sm_scale, variant=variant)


def gather_pages(cache, page_table, dtype):
  """Dense K, V [B, max_pages * page_size, Nkv, D] for every sequence of page_table.
  Page ids are clipped to [0, P) so reads stay inside the cache."""
  P = cache.k_pages.shape[0]
  idx = jnp.clip(page_table, 0, P - 1)
  B, M = page_table.shape
  ps = cache.page_size

  def one(pages, scale):
    x = dequantize(pages, scale, dtype)[idx]  # [B, M, ps, Nkv, D]
    return x.reshape(B, M * ps, *x.shape[3:])

  return one(cache.k_pages, cache.k_scale), one(cache.v_pages, cache.v_scale)


def decode(q, cache, page_table, kv_lens, *, sm_scale: float, variant: Variant):
  """One query per sequence (q [B,Nq,D]) against its kv_lens[b] cached tokens, which
  include the query's own. kv_lens are clipped to [0, max_pages * page_size]."""
  acc = _acc_dtype(q.dtype)
  k, v = gather_pages(cache, page_table, acc)
  o, lse = attention(q[:, None], k, v, sm_scale=sm_scale, variant=variant,
                     q_lengths=jnp.ones_like(kv_lens), kv_lengths=kv_lens)
  return o[:, 0].astype(q.dtype), lse[:, 0]


def _packed_rows(offsets, n):
  """For packed rows 0..n-1: (sequence id, index within sequence, valid)."""
  i = jnp.arange(n, dtype=jnp.int32)
  b = jnp.searchsorted(offsets[1:], i, side="right").astype(jnp.int32)
  nb = offsets.shape[0] - 1
  valid = (i >= offsets[0]) & (i < offsets[nb])
  b = jnp.clip(b, 0, nb - 1)
  return b, i - offsets[b], valid


def prefill_ragged(q, k, v, q_offsets, kv_offsets, *, sm_scale: float, variant: Variant):
  """Packed q [Tq,Nq,D] and packed k/v [Tk,Nkv,D]; query rows are the last q_len_b
  tokens of sequence b's kv_len_b tokens."""
  qb, qt, qvalid = _packed_rows(q_offsets, q.shape[0])
  kb, kt, kvalid = _packed_rows(kv_offsets, k.shape[0])
  q_len = q_offsets[1:] - q_offsets[:-1]
  kv_len = kv_offsets[1:] - kv_offsets[:-1]
  q_pos = kv_len[qb] - q_len[qb] + qt
  o, lse = attend(q[None], k[None], v[None], q_pos=q_pos[None], kv_pos=kt[None],
                  q_batch=qb[None], kv_batch=kb[None], q_valid=qvalid[None],
                  kv_valid=kvalid[None], sm_scale=sm_scale, variant=variant)
  return o[0], lse[0]


def prefill(q, cache, page_table, kv_lens, q_offsets, *, sm_scale: float, variant: Variant):
  """Packed queries against the paged cache (append semantics: sequence b's queries are
  the last q_len_b of its kv_lens[b] tokens)."""
  acc = _acc_dtype(q.dtype)
  k, v = gather_pages(cache, page_table, acc)  # [B, S, Nkv, D]
  B, S = k.shape[:2]
  kv_len = jnp.clip(kv_lens, 0, S)
  qb, qt, qvalid = _packed_rows(q_offsets, q.shape[0])
  q_len = q_offsets[1:] - q_offsets[:-1]
  q_pos = kv_len[qb] - q_len[qb] + qt
  s = jnp.arange(S, dtype=jnp.int32)
  kb = jnp.repeat(jnp.arange(B, dtype=jnp.int32), S)
  kt = jnp.tile(s, B)
  kvalid = kt < kv_len[kb]
  o, lse = attend(q[None], k.reshape(1, B * S, *k.shape[2:]), v.reshape(1, B * S, *v.shape[2:]),
                  q_pos=q_pos[None], kv_pos=kt[None], q_batch=qb[None], kv_batch=kb[None],
                  q_valid=qvalid[None], kv_valid=kvalid[None], sm_scale=sm_scale,
                  variant=variant, out_dtype=q.dtype)
  return o[0], lse[0]


def merge_states(o_a, lse_a, o_b, lse_b):
  """Exact merge of two partial attentions over disjoint key sets. o [..., Dv],
  lse [...] (natural log). Both -inf gives o = 0, lse = -inf."""
  acc = _acc_dtype(o_a.dtype)
  la, lb = lse_a.astype(acc), lse_b.astype(acc)
  m = jnp.maximum(la, lb)
  m_safe = jnp.where(jnp.isfinite(m), m, 0)
  wa, wb = jnp.exp(la - m_safe), jnp.exp(lb - m_safe)
  w = wa + wb
  o = (wa[..., None] * o_a.astype(acc) + wb[..., None] * o_b.astype(acc))
  o = jnp.where(w[..., None] > 0, o / jnp.where(w > 0, w, 1)[..., None], 0)
  lse = jnp.where(w > 0, m_safe + jnp.log(jnp.where(w > 0, w, 1)), -jnp.inf)
  return o.astype(o_a.dtype), lse.astype(lse_a.dtype)


def quantize(x, scale, dtype):
  """x / scale[kv head] saturated to `dtype`'s finite range (e4m3: 448, e5m2: 57344),
  then cast. x [..., Nkv, D]."""
  y = x.astype(jnp.float32) / scale[:, None].astype(jnp.float32)
  top = float(jnp.finfo(dtype).max)
  return jnp.clip(y, -top, top).astype(dtype)


def append_kv(cache, k_new, v_new, page_table, batch_ids, positions):
  """Scatter tokens k_new/v_new [T,Nkv,D] into the cache. Token i goes to sequence
  batch_ids[i] at position positions[i]. Tokens whose batch id, position or page id is
  out of range (batch_ids < 0 marks padding) are dropped: nothing outside the cache is
  ever written. Uses an in-place scatter, so a donated cache is updated without a copy."""
  P, ps = cache.k_pages.shape[:2]
  B, M = page_table.shape
  b = batch_ids.astype(jnp.int32)
  pos = positions.astype(jnp.int32)
  ok = (b >= 0) & (b < B) & (pos >= 0) & (pos < M * ps)
  page = page_table[jnp.clip(b, 0, B - 1), jnp.clip(pos // ps, 0, M - 1)]
  ok = ok & (page >= 0) & (page < P)
  page = jnp.where(ok, page, P)  # P is out of bounds: mode="drop" skips the write
  slot = pos % ps

  def write(pages, scale, x):
    x = quantize(x, scale, pages.dtype) if scale is not None else x.astype(pages.dtype)
    return pages.at[page, slot].set(x, mode="drop")

  return cache.replace(k_pages=write(cache.k_pages, cache.k_scale, k_new),
                       v_pages=write(cache.v_pages, cache.v_scale, v_new))


def mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, page_table, kv_lens, *, sm_scale: float,
               ckv_scale=None, kpe_scale=None):
  """Absorbed multi-head latent attention over a paged latent cache.

  q_nope [B,T,H,R] (up-projections absorbed), q_pe [B,T,H,Dr]; ckv_cache [P,ps,R],
  kpe_cache [P,ps,Dr] (float8 with scalar scales allowed). It is attention with one kv
  head whose key is concat(ckv, kpe) and whose value is ckv:
  logits = sm_scale * (q_nope . ckv + q_pe . kpe), o = softmax(logits) @ ckv  ([B,T,H,R]).
  The T queries are the last T of sequence b's kv_lens[b] tokens, causal among themselves.
  """
  from jattn.cache import PagedKVCache  # local: cache imports nothing from here
  from jattn.variants import causal
  acc = _acc_dtype(q_nope.dtype)

  def view(pages, scale):
    s = None if scale is None else jnp.reshape(jnp.asarray(scale, jnp.float32), (1,))
    return pages[:, :, None, :], s

  ck, cs = view(ckv_cache, ckv_scale)
  kk, ks = view(kpe_cache, kpe_scale)
  cache = PagedKVCache(ck, kk, cs, ks)
  ckv, kpe = gather_pages(cache, page_table, acc)           # [B,S,1,R], [B,S,1,Dr]
  B, T = q_nope.shape[:2]
  q = jnp.concatenate([q_nope.astype(acc), q_pe.astype(acc)], axis=-1)
  k = jnp.concatenate([ckv, kpe], axis=-1)
  o, lse = attention(q, k, ckv, sm_scale=sm_scale, variant=causal(),
                     q_lengths=jnp.full((B,), T, jnp.int32), kv_lengths=kv_lens)
  return o.astype(q_nope.dtype), lse


def block_sparse_attention(q, k, v, layout, *, sm_scale: float, variant: Variant):
  """Dense attention restricted to the layout's blocks (see `jattn.block_sparse`): the
  layout becomes a mask over (t, s), composed with the variant."""
  from jattn.variants import compose
  T, S = q.shape[1], k.shape[1]
  return attention(q, k, v, sm_scale=sm_scale, variant=compose(layout.as_variant(T, S), variant))


def dequantize(x, scale, dtype):
  """x [..., N, D] (float8 pages or inputs) times a per-head scale [N] -> dtype; a None
  scale is a plain cast. The product is formed in float32, or in dtype when wider."""
  if scale is None:
    return x.astype(dtype)
  wide = jnp.promote_types(dtype, jnp.float32)
  return (x.astype(wide) * jnp.asarray(scale, wide)[:, None]).astype(dtype)


def attention_fp8(q, k, v, q_scale, k_scale, v_scale, *, sm_scale: float, variant: Variant,
                  q_lengths=None, kv_lengths=None):
  """float8 attention: q, k, v [B,T|S,N,D] dequantized with their per-head scales
  (q_scale [Nq], k_scale / v_scale [Nkv]), then `attention` in float32 (float64 when the
  scales are float64, as in the oracle). Returns (o, lse) in that precision; the
  implementations return o as bfloat16."""
  acc = jnp.promote_types(jnp.asarray(q_scale).dtype, jnp.float32)
  q, k, v = (dequantize(x, s, acc) for x, s in ((q, q_scale), (k, k_scale), (v, v_scale)))
  return attention(q, k, v, sm_scale=sm_scale, variant=variant, q_lengths=q_lengths,
                   kv_lengths=kv_lengths)
