"""Block-sparse attention on the Pallas Mosaic GPU prefill kernels (`jattn.pallas.prefill`,
`jattn.pallas.prefill_bwd`), which iterate per-(head, q tile) kv-tile lists in place of
the band's tile range when their geometry says `sparse` (a compile-time branch: the dense
path is unchanged).

Layouts (public API, BTNH): q [B,T,Nq,D], k [B,S,Nkv,D], v [B,S,Nkv,Dv] -> o [B,T,Nq,Dv],
lse [B,T,Nq]; query t sees key s iff the layout lists their (block, block) tile and the
variant keeps (q_pos, kv_pos) = (S - T + t, s). Rows that see no key give 0 and lse -inf.

Tile lists (`tile_lists`, jnp, in each call, or once per layout with
`jattn.plan_block_sparse`): the layout's blocks are expanded to 64 x 64 kernel tiles (so
fixed block sizes must be multiples of 64), cut to the variant's band, and each 64-row q
tile gets the list of its kv tiles in three ascending runs: the whole tiles (no mask code:
inside the band and below S) that the other q tile of its pair (2i, 2i + 1) also has
whole, its other whole tiles, then its edge tiles (mask evaluated elementwise: band
edges, custom masks). Table int32 [Hl, rows, HEADER + nkt]: [n, n_whole, n_shared, tile
ids...]; Hl = 1 (one layout for all heads) or Nq (per head). The forward's CTA covers a
pair (one q tile per consumer warpgroup); both step through max(n_0, n_1) ring slots.
The first n_shared steps load one K and V tile that both consumers read (the pair's
common tiles: half the bytes of two 64-key tiles); later steps load each consumer's own
tile into its half of the slot. Empty tiles cost nothing; a q tile with an empty list
writes zeros.

Backward (`jax.custom_vjp`): dQ iterates the same lists; dK/dV iterate the transposed
lists (per kv tile, the q tiles that list it, for every head of the GQA group).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jattn.pallas import prefill as P
from jattn.variants import Variant

TILE = 64     # kernel tile (rows and keys); layouts' blocks must be multiples of it
HEADER = 3    # a list's [count, whole count, shared count] before its tile ids


@dataclasses.dataclass(frozen=True)
class Config:
  """Forward ring depth (3 stages exceed the SMEM limit at D=128 by 120 bytes) and the
  grid: persistent (one CTA per SM walking the items, the producer loading the next
  item's Q and K/V while the consumers finish the current one) by default. A CTA of the
  sparse kernel runs few steps (13 at density 0.1, T=8192), so hiding its start and end
  matters: 0.254 vs 0.287 ms with one CTA per item on an H200 (block-sparse probe run 2)."""

  num_stages: int = 2
  persistent: bool = True


# ----------------------------------------------------------------------------- capability

def supports(spec) -> Optional[str]:
  """None if the kernel can serve `spec`, else the reason."""
  if spec.op != "block_sparse_attention":
    return f"no Pallas block-sparse kernel for op {spec.op!r}"
  why = P.operand_reason(spec, max_head_dim=128)
  if why is not None:
    return why
  return _block_reason(dict(spec.extra).get("block_size"))


def _block_reason(block) -> Optional[str]:
  if block is None:
    return ("variable block sizes: the kernel needs fixed blocks whose sides are "
            f"multiples of {TILE} (the xla implementation serves any layout)")
  if block[0] % TILE or block[1] % TILE:
    return f"block size {tuple(block)}: the kernel needs multiples of {TILE}"
  return None


def layout_reason(layout) -> Optional[str]:
  """None if the kernel can iterate `layout`, else the reason."""
  return _block_reason(layout.block_size)


# ----------------------------------------------------------------------------- tile lists

def _expand(layout, T, S):
  """bool [Hl, nqt, nkt]: the layout's blocks as TILE x TILE tiles."""
  R, C = layout.block_size
  m = jnp.repeat(jnp.repeat(layout.block_mask, R // TILE, 1), C // TILE, 2)
  return m[:, :-(-T // TILE), :-(-S // TILE)]


def _sorted_lists(keep, whole, shared=None):
  """Per row of shared <= whole <= keep [Hl, r, n]: [count, whole count, shared count,
  ids (shared, then the other whole, then edge, then the rest, each ascending)]; no
  shared tiles when `shared` is None."""
  # A stable partition by cumulative counts and one scatter (an argsort took 45 us on an
  # H100 at 32 x 128 x 128, a seventh of the density-0.1 call).
  edge = keep & ~whole
  count = lambda x: x.sum(-1, dtype=jnp.int32, keepdims=True)
  n_whole, n = count(whole), count(keep)
  rank = lambda x: jnp.cumsum(x, -1, dtype=jnp.int32) - 1
  pos_whole, n_shared = rank(whole), jnp.zeros_like(n)
  if shared is not None:
    own, n_shared = whole & ~shared, count(shared)
    pos_whole = jnp.where(shared, rank(shared), n_shared + rank(own))
  pos = jnp.where(whole, pos_whole, jnp.where(edge, n_whole + rank(edge), n + rank(~keep)))
  j = jnp.broadcast_to(jnp.arange(keep.shape[-1], dtype=jnp.int32), keep.shape)
  ids = jnp.put_along_axis(jnp.zeros_like(j), pos, j, axis=-1, inplace=False)
  return jnp.concatenate([n, n_whole, n_shared, ids], -1)


def tile_lists(layout, T: int, S: int, variant: Variant):
  """(rows int32 [Hl, rows_pad, HEADER + nkt], cols int32 [Hl, cols_pad, HEADER + nqt]):
  the kv-tile list of each q tile and the q-tile list of each kv tile (see module doc; the
  cols lists share nothing), padded with empty lists to whole CTAs (two tiles)."""
  rows_pad, cols_pad = -(-T // (2 * TILE)) * 2, -(-S // (2 * TILE)) * 2
  tm = _expand(layout, T, S)
  nqt, nkt = tm.shape[1:]
  r = jnp.arange(nqt, dtype=jnp.int32)
  first = S - T + r * TILE
  last = S - T + jnp.minimum(r * TILE + TILE, T) - 1
  lo, hi = P.band_tiles(variant, S, first, last, TILE)
  a, b = P.full_tiles(variant, S, first, last, TILE, lo, hi)
  j = jnp.arange(nkt, dtype=jnp.int32)[None]
  col = lambda x: jnp.broadcast_to(x, (nqt,))[:, None]
  inside = lambda x, y: (j >= col(x)) & (j < col(y))
  keep = tm & inside(lo, hi)[None]
  whole = keep & inside(a, b)[None]
  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0)))
  kp, wp = pad(keep, rows_pad), pad(whole, rows_pad)
  pair = wp.reshape(wp.shape[0], rows_pad // 2, 2, nkt).all(2)
  shared = wp & jnp.repeat(pair, 2, axis=1)
  # The transposed lists: a (q tile, kv tile) pair runs mask-free in the backward when it
  # does in the forward (the whole-tile test is per q tile; it holds per pair).
  kt, wt = pad(jnp.swapaxes(keep, 1, 2), cols_pad), pad(jnp.swapaxes(whole, 1, 2), cols_pad)
  return _sorted_lists(kp, wp, shared), _sorted_lists(kt, wt)


# ----------------------------------------------------------------------------- geometry

class Sparse(P.Dense):
  """Dense q/k/v/o/lse layouts (no lengths), work items of two TILE-row q tiles; the KV
  steps come from extra[0] = the rows table of `tile_lists` (see the module doc)."""

  sparse = True
  kv_copies = 2   # each ring slot holds one K (V) tile per consumer warpgroup

  def __init__(self, B, Nq, num_q_tiles, T, S, per_head):
    super().__init__(B, Nq, num_q_tiles, T, S, False, False)
    self.num_extra, self.per_head = 1, per_head

  def _row(self, h, r0):
    return (h if self.per_head else 0), lax.div(r0, TILE)

  def num_steps(self, refs, h, r0):
    hl, r = self._row(h, r0)
    (t,) = refs.extra[:1]
    return jnp.maximum(t[hl, r, 0], t[hl, r + 1, 0])

  def segment(self, refs, h, r0, c):
    """(whole tiles, all tiles) of consumer c's list."""
    hl, r = self._row(h, r0)
    return refs.extra[0][hl, r + c, 1], refs.extra[0][hl, r + c, 0]

  def shared(self, refs, h, r0):
    """Steps [0, shared) load one tile, into half 0, for both consumers."""
    hl, r = self._row(h, r0)
    return refs.extra[0][hl, r, 2]

  def kv_tile(self, refs, h, r0, c, g):
    hl, r = self._row(h, r0)
    return refs.extra[0][hl, r + c, HEADER + g]

  def kv_base(self, refs, b, h, r0):
    hl, r = self._row(h, r0)
    t = refs.extra[0]
    return hl, r, (t[hl, r, 0], t[hl, r + 1, 0]), t[hl, r, 2]

  def kv_index(self, refs, base, g):
    hl, r, _, _ = base
    t = refs.extra[0]
    return g, (t[hl, r, HEADER + g], t[hl, r + 1, HEADER + g])

  def load_kv(self, refs, b, base, kvh, j, bkv, src, dst, bar):
    """Step g of src (refs.k or refs.v): consumer c's g-th tile into half c, for c = 1
    only from the first step that is not shared (a plain arrival where nothing is
    loaded)."""
    g, tiles = j
    (n0, n1), ns = base[2], base[3]
    loads = (g < n0, jnp.logical_and(g >= ns, g < n1))
    for c in range(2):
      @pl.when(loads[c])
      def _():
        rows = pl.ds(pl.multiple_of(tiles[c] * bkv, 8), bkv)
        plgpu.copy_gmem_to_smem(src.at[b, rows, kvh], dst.at[c], bar)

      @pl.when(jnp.logical_not(loads[c]))
      def _():
        plgpu.barrier_arrive(bar)


# ----------------------------------------------------------------------------- forward

def _forward(q, k, v, rows, variant, *, sm_scale, cfg, per_head, interpret):
  """o [B,T,Nq,Dv], lse [B,Nq,T] (head-major, as the kernel writes it)."""
  B, T, Nq, D = q.shape
  _, S, Nkv, Dv = v.shape
  kcfg = P.Config(block_q=TILE, block_kv=TILE, num_stages=cfg.num_stages,
                  heavy_first=False, persistent=cfg.persistent)
  qp = P._pad_to(q, 1, 2 * TILE)
  kp, vp = P._pad_to(k, 1, TILE), P._pad_to(v, 1, TILE)
  Tp = qp.shape[1]
  geo = Sparse(B, Nq, Tp // (2 * TILE), T, S, per_head)
  out_types = (jax.ShapeDtypeStruct((B, Tp, Nq, Dv), q.dtype),
               jax.ShapeDtypeStruct((B, Nq, Tp), jnp.float32))
  o, lse = P.run_forward(geo, qp, kp, vp, [rows], out_types, variant, sm_scale=sm_scale,
                         cfg=kcfg, head_dim=D, v_head_dim=Dv, group=Nq // Nkv,
                         interpret=interpret)
  return o[:, :T], lse[:, :, :T]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _core(q, k, v, rows, cols, variant, sm_scale, cfg, per_head, interpret):
  o, lse = _forward(q, k, v, rows, variant, sm_scale=sm_scale, cfg=cfg, per_head=per_head,
                    interpret=interpret)
  return o, jnp.swapaxes(lse, 1, 2)


def _core_fwd(q, k, v, rows, cols, variant, sm_scale, cfg, per_head, interpret):
  o, lse = _forward(q, k, v, rows, variant, sm_scale=sm_scale, cfg=cfg, per_head=per_head,
                    interpret=interpret)
  return (o, jnp.swapaxes(lse, 1, 2)), (q, k, v, rows, cols, variant, o, lse)


def _core_bwd(sm_scale, cfg, per_head, interpret, res, cts):
  from jattn.pallas import prefill_bwd
  q, k, v, rows, cols, variant, o, lse = res
  do, dlse = cts
  dq, dk, dv = prefill_bwd.flash_backward(
      q, k, v, None, variant, o, lse, do, jnp.swapaxes(dlse, 1, 2), sm_scale=sm_scale,
      interpret=interpret,
      sparse=prefill_bwd.SparseLists(rows, cols, per_head, TILE, HEADER))
  return dq, dk, dv, None, None, jax.tree.map(jnp.zeros_like, variant)


_core.defvjp(_core_fwd, _core_bwd)


def block_sparse_attention(q, k, v, layout, *, sm_scale, variant, plan=None,
                           interpret=False, config: Optional[Config] = None):
  """`jattn.block_sparse_attention` on the kernels; `plan` (a checked
  `jattn.block_sparse.BlockSparsePlan`) supplies the tile lists, else they are built here.
  Returns (o, lse [B,T,Nq])."""
  T, S = q.shape[1], k.shape[1]
  cfg = config or Config()
  q, k = P.token_transforms(q, k, variant, None, None)
  kvar = P._kernel_variant(variant)
  rows, cols = (plan.rows, plan.cols) if plan is not None else tile_lists(layout, T, S, kvar)
  return _core(q, k, v, rows, cols, kvar, float(sm_scale), cfg, layout.num_heads > 1,
               interpret)
