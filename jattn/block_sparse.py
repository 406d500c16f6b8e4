"""Block-sparse layouts: which (query block, key block) tiles attention computes.

A `BlockSparseLayout` is stored in one canonical form that covers fixed and variable
block sizes and per-head layouts:

  block_mask   bool  [Hl, nqb, nkb]   Hl = 1 (shared by all heads) or Nq (per query head)
  row_offsets  int32 [Hl, nqb + 1]    query block i covers rows row_offsets[h, i]:[h, i+1]
  col_offsets  int32 [Hl, nkb + 1]    key block j covers keys col_offsets[h, j]:[h, j+1]

Query t sees key s iff block_mask[h, block_of(t), block_of(s)] (and whatever the variant
adds). Build one with `from_dense`, `from_bsr` (FlashInfer's indptr/indices), `variable`,
or the helpers `local_global`, `strided`, `topk`, `from_mask_fn`, `random_layout`.
`to_bsr` gives the indptr/indices form that kernels iterate (no work for empty blocks).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jattn.memo import IdentityMemo
from jattn.variants import Context, Variant


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockSparseLayout:
  block_mask: Any
  row_offsets: Any
  col_offsets: Any
  block_size: Optional[tuple[int, int]] = dataclasses.field(default=None,
                                                             metadata=dict(static=True))

  @property
  def num_heads(self) -> int:
    return self.block_mask.shape[0]

  @property
  def shape(self) -> tuple[int, int]:
    """(T, S) covered by the layout (static for fixed block sizes)."""
    if self.block_size is None:
      raise ValueError("variable-size layouts have a data-dependent shape")
    return (self.block_mask.shape[1] * self.block_size[0],
            self.block_mask.shape[2] * self.block_size[1])

  def density(self):
    """Fraction of the (T, S) plane the layout computes (float32, per head)."""
    rows = jnp.diff(self.row_offsets, axis=-1).astype(jnp.float32)
    cols = jnp.diff(self.col_offsets, axis=-1).astype(jnp.float32)
    area = jnp.einsum("hi,hij,hj->h", rows, self.block_mask.astype(jnp.float32), cols)
    return area / (rows.sum(-1) * cols.sum(-1))

  def element_mask(self, T: int, S: int):
    """bool [Hl, T, S]: the mask the layout stands for (the oracle's view)."""
    def block_of(offsets, n):
      i = jnp.arange(n, dtype=jnp.int32)
      b = jax.vmap(lambda o: jnp.searchsorted(o, i, side="right") - 1)(offsets)
      inside = (i[None] >= offsets[:, :1]) & (i[None] < offsets[:, -1:])
      return jnp.clip(b, 0, offsets.shape[1] - 2), inside

    rb, rin = block_of(self.row_offsets, T)
    cb, cin = block_of(self.col_offsets, S)
    m = jax.vmap(lambda bm, r, c: bm[r[:, None], c[None, :]])(self.block_mask, rb, cb)
    return m & rin[:, :, None] & cin[:, None, :]

  def to_bsr(self):
    """(indptr int32 [Hl, nqb+1], indices int32 [Hl, nqb*nkb]) with the nonzero key blocks
    of each query block first, padded with -1 (static shapes)."""
    m = self.block_mask
    counts = m.sum(-1).astype(jnp.int32)
    indptr = jnp.concatenate([jnp.zeros(counts.shape[:1] + (1,), jnp.int32),
                              jnp.cumsum(counts, -1, dtype=jnp.int32)], -1)
    nkb = m.shape[2]
    order = jnp.argsort(~m, axis=-1, stable=True).astype(jnp.int32)  # nonzeros first
    idx = jnp.where(jnp.arange(nkb)[None, None] < counts[..., None], order, -1)
    flat = idx.reshape(m.shape[0], -1)
    keep = flat >= 0
    pos = jnp.argsort(~keep, axis=-1, stable=True)
    return indptr, jnp.take_along_axis(flat, pos, -1)

  def as_variant(self, T: int, S: int) -> Variant:
    """The layout as a mask variant over (t, s) = (q_pos - (S - T), kv_pos)."""
    mask = self.element_mask(T, S)
    per_head = mask.shape[0] > 1

    def logits_mask(ctx: Context):
      t = ctx.q_pos - (S - T)
      h = ctx.head if per_head else jnp.zeros_like(ctx.head)
      ok = (t >= 0) & (t < T) & (ctx.kv_pos >= 0) & (ctx.kv_pos < S)
      return ok & mask[h, jnp.clip(t, 0, T - 1), jnp.clip(ctx.kv_pos, 0, S - 1)]

    return Variant(logits_mask=logits_mask, name="block_sparse")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockSparsePlan:
  """The Pallas kernel's tile lists for one layout at one (q_len, kv_len) and mask, made
  once by `plan` and reused by every call that passes it (FlashInfer's plan/run split:
  one plan per layout, every layer runs it). Without a plan each call builds its lists.

  rows int32 [Hl, q_tiles, 3 + kv_tiles]: per 64-row q tile, [count, mask-free count,
  count shared with the other q tile of its pair, kv tile ids...]; cols int32 [Hl,
  kv_tiles, 3 + q_tiles]: the transposed lists (the backward's dK/dV; none shared). The static fields record what the lists were built for;
  `jattn.block_sparse_attention` refuses a plan whose fields differ from its call.
  `layout_digest` fingerprints the layout's tiles when they were known at plan time; a
  call whose layout is known too (not a jit argument) must match it. Implementations
  other than the Pallas kernel ignore the plan (their results are the same without it)."""

  rows: Any
  cols: Any
  q_len: int = dataclasses.field(metadata=dict(static=True))
  kv_len: int = dataclasses.field(metadata=dict(static=True))
  num_heads: int = dataclasses.field(metadata=dict(static=True))
  band: Any = dataclasses.field(metadata=dict(static=True))
  custom_mask: bool = dataclasses.field(metadata=dict(static=True))
  layout_digest: Optional[str] = dataclasses.field(default=None, metadata=dict(static=True))

  def mismatch(self, layout: BlockSparseLayout, q_len: int, kv_len: int,
               variant: Variant) -> Optional[str]:
    """None if the plan serves this call, else what differs."""
    want = dict(q_len=q_len, kv_len=kv_len, num_heads=layout.num_heads, band=variant.band,
                custom_mask=variant.has_custom_mask)
    diff = [f"{k} {getattr(self, k)!r} (call: {v!r})" for k, v in want.items()
            if getattr(self, k) != v]
    if self.layout_digest is not None:
      digest = layout_digest(layout)
      if digest is not None and digest != self.layout_digest:
        diff.append("the layout's tiles differ from those it was made from")
    return "; ".join(diff) or None


_DIGESTS = IdentityMemo(16)


def layout_digest(layout: BlockSparseLayout) -> Optional[str]:
  """A fingerprint of the layout's tiles, or None when they are traced (unknown). The
  last few are kept by identity of the mask and offset arrays, so an eager call copies
  a layout to the host once."""
  arrays = (layout.block_mask, layout.row_offsets, layout.col_offsets)
  if any(isinstance(a, jax.core.Tracer) for a in arrays):
    return None   # the tiles are not known at trace time

  def digest():
    h = hashlib.sha1(repr((layout.block_size, np.shape(layout.block_mask))).encode())
    h.update(np.packbits(np.asarray(layout.block_mask, bool)).tobytes())
    for off in arrays[1:]:
      h.update(np.asarray(off, np.int32).tobytes())
    return h.hexdigest()[:16]

  return _DIGESTS.get(arrays, layout.block_size, digest)


def plan(layout: BlockSparseLayout, q_len: int, kv_len: int, *, causal: bool = False,
         variant: Optional[Variant] = None) -> BlockSparsePlan:
  """Tile lists of `layout` for `jattn.block_sparse_attention(..., plan=...)` calls with
  these (q_len, kv_len), `causal` and `variant` (only its mask band and whether it has a
  custom mask matter). Works on host or device arrays and under jit.

  >>> p = jattn.plan_block_sparse(layout, T, S)
  >>> o = jattn.block_sparse_attention(q, k, v, layout, plan=p)
  """
  from jattn import api
  from jattn.pallas import block_sparse as kernel
  why = kernel.layout_reason(layout)
  if why is not None:
    raise ValueError(f"jattn.plan_block_sparse: {why}")
  var = api.build_variant("plan_block_sparse", causal, None, None, variant)
  rows, cols = kernel.tile_lists(layout, q_len, kv_len, var)
  return BlockSparsePlan(rows, cols, int(q_len), int(kv_len), layout.num_heads, var.band,
                         var.has_custom_mask, layout_digest(layout))


def _fixed_offsets(n_blocks, size, heads):
  off = jnp.arange(n_blocks + 1, dtype=jnp.int32) * size
  return jnp.broadcast_to(off, (heads, n_blocks + 1))


def from_dense(block_mask, block_size: tuple[int, int]) -> BlockSparseLayout:
  """From a bool block mask [nqb, nkb] or [Hl, nqb, nkb] with fixed block size (R, C)."""
  m = jnp.asarray(block_mask, bool)
  if m.ndim == 2:
    m = m[None]
  if m.ndim != 3:
    raise ValueError(f"block_mask must be [nqb, nkb] or [H, nqb, nkb], got {m.shape}")
  R, C = (int(b) for b in block_size)
  return BlockSparseLayout(m, _fixed_offsets(m.shape[1], R, m.shape[0]),
                           _fixed_offsets(m.shape[2], C, m.shape[0]), (R, C))


def from_bsr(indptr, indices, block_size: tuple[int, int], num_key_blocks: int):
  """From BSR: indptr [nqb+1] (or [Hl, nqb+1]), indices [nnz] (or [Hl, nnz]) of key blocks."""
  indptr, indices = np.asarray(indptr), np.asarray(indices)
  if indptr.ndim == 1:
    indptr, indices = indptr[None], indices[None]
  H, nqb = indptr.shape[0], indptr.shape[1] - 1
  m = np.zeros((H, nqb, num_key_blocks), bool)
  for h in range(H):
    for i in range(nqb):
      cols = indices[h, indptr[h, i]:indptr[h, i + 1]]
      if ((cols < 0) | (cols >= num_key_blocks)).any():
        raise ValueError(f"from_bsr: key block index out of [0, {num_key_blocks}) in row {i}")
      m[h, i, cols] = True
  return from_dense(m, block_size)


def variable(block_mask, row_sizes, col_sizes) -> BlockSparseLayout:
  """Per-head variable block sizes: row_sizes [Hl, nqb], col_sizes [Hl, nkb] (int)."""
  m = jnp.asarray(block_mask, bool)
  m = m[None] if m.ndim == 2 else m
  rs = jnp.atleast_2d(jnp.asarray(row_sizes, jnp.int32))
  cs = jnp.atleast_2d(jnp.asarray(col_sizes, jnp.int32))
  if rs.shape != m.shape[:2] or cs.shape != (m.shape[0], m.shape[2]):
    raise ValueError(f"variable: row_sizes {rs.shape} / col_sizes {cs.shape} do not match "
                     f"block_mask {m.shape}")
  cum = lambda x: jnp.concatenate([jnp.zeros((x.shape[0], 1), jnp.int32),
                                   jnp.cumsum(x, -1, dtype=jnp.int32)], -1)
  return BlockSparseLayout(m, cum(rs), cum(cs), None)


def local_global(T: int, S: int, block: int, window_blocks: int, global_blocks: int = 1,
                 causal: bool = True) -> BlockSparseLayout:
  """Sliding window of `window_blocks` key blocks plus the first `global_blocks` ones."""
  nq, nk = -(-T // block), -(-S // block)
  i = np.arange(nq)[:, None] + (nk - nq)   # bottom-right aligned block diagonal
  j = np.arange(nk)[None, :]
  m = (np.abs(i - j) < window_blocks) | (j < global_blocks)
  if causal:
    m &= j <= i
  return from_dense(m, (block, block))


def strided(T: int, S: int, block: int, stride: int, causal: bool = True):
  """Local diagonal block plus every `stride`-th key block (Sparse-Transformer style)."""
  nq, nk = -(-T // block), -(-S // block)
  i = np.arange(nq)[:, None] + (nk - nq)
  j = np.arange(nk)[None, :]
  m = (i == j) | (j % stride == stride - 1)
  if causal:
    m &= j <= i
  return from_dense(m, (block, block))


def topk(q, k, block: int, k_blocks: int, causal: bool = False) -> BlockSparseLayout:
  """Per-head top-k key blocks by mean-pooled q.k block scores (a scoring pass).
  q [T, Nq, D], k [S, Nkv, D] of one sequence; always keeps the diagonal block. A last
  partial block is pooled over the rows it has."""
  T, Nq, D = q.shape
  S, Nkv, _ = k.shape
  nq, nk = -(-T // block), -(-S // block)

  def pool(x, n, length):
    x = jnp.pad(x.astype(jnp.float32), ((0, n * block - length), (0, 0), (0, 0)))
    rows = jnp.minimum(block, length - block * jnp.arange(n)).astype(jnp.float32)
    return x.reshape(n, block, *x.shape[1:]).sum(1) / rows[:, None, None]

  qb, kb = pool(q, nq, T), pool(k, nk, S)
  kb = jnp.repeat(kb, Nq // Nkv, axis=1)
  score = jnp.einsum("ihd,jhd->hij", qb, kb)
  i = jnp.arange(nq)[:, None] + (nk - nq)
  j = jnp.arange(nk)[None, :]
  if causal:
    score = jnp.where(j <= i, score, -jnp.inf)
  score = jnp.where(i == j, jnp.inf, score)
  kth = jax.lax.top_k(score, min(k_blocks, nk))[0][..., -1:]
  m = (score >= kth) & (score > -jnp.inf)
  if causal:
    m &= j <= i
  return from_dense(m, (block, block))


def from_mask_fn(mask_fn: Callable[[Context], Any], T: int, S: int, block: tuple[int, int],
                 num_heads: int = 1) -> BlockSparseLayout:
  """FlexAttention-style: evaluate a `logits_mask(ctx)` on every tile once and keep the
  tiles where any element is visible. ctx.q_pos is bottom-right aligned (S - T + t).
  The layout keeps whole tiles: pass the mask itself to the call too (as
  `Variant(logits_mask=mask_fn)`, or `causal=True`) for it to apply inside them."""
  R, C = block
  nq, nk = -(-T // R), -(-S // C)
  t = jnp.arange(nq * R, dtype=jnp.int32)
  s = jnp.arange(nk * C, dtype=jnp.int32)
  ctx = Context(q_pos=(S - T + t)[None, :, None], kv_pos=s[None, None, :],
                head=jnp.arange(num_heads, dtype=jnp.int32)[:, None, None],
                batch=jnp.zeros((), jnp.int32))
  m = jnp.broadcast_to(mask_fn(ctx), (num_heads, nq * R, nk * C))
  m = m & (t < T)[None, :, None] & (s < S)[None, None, :]
  m = m.reshape(num_heads, nq, R, nk, C).any(axis=(2, 4))
  return from_dense(m, block)


def random_layout(num_heads: int, T: int, S: int, block: int, density: float,
                  seed: int = 0) -> BlockSparseLayout:
  """Per-head random layout with exactly max(1, round(density * nkb)) distinct key blocks
  in every query block row (uniform without replacement, numpy `default_rng(seed)`), so
  every row and head does the same work: the benchmarks' `density` workloads."""
  nq, nk = -(-T // block), -(-S // block)
  n = max(1, min(nk, int(round(density * nk))))
  order = np.random.default_rng(seed).random((num_heads, nq, nk)).argsort(-1)
  m = np.zeros((num_heads, nq, nk), bool)
  np.put_along_axis(m, order[..., :n], True, -1)
  return from_dense(m, (block, block))
