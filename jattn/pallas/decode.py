"""Paged-KV decode: a Pallas Mosaic GPU kernel with split-K (flash-decoding) and a plan.

Layout. q [B, Nq, D] (bf16/fp16); pages [P, page_size, Nkv, D] (v: Dv) in q's dtype or
float8; page_table int32 [B, M]; kv_lens int32 [B]. Query head h reads kv head h // G
(G = Nq / Nkv). page_size must divide 64 or be a multiple of 64; D, Dv multiples of 16;
one page's rows (up to 64) of K and of V a multiple of 128 bytes (TMA alignment).

Work split. The keys of sequence b are cut into 64-key tiles (whole pages, or a slice of
one page when pages are larger). A `DecodePlan` (`plan_decode`) cuts every sequence into
units of about equal work, so that one long sequence among short ones is spread over
many CTAs; a uniform batch that fills the GPU is not cut at all. One CTA handles one
(unit, kv head): its G query heads are the first rows of a 64-row tile (the other rows
are zero and discarded), so each KV tile is read from HBM once for the whole group and
both products run on the tensor cores (wgmma, M = 64; P is the register operand):

  S = Q K^T [64, 64] (f32)  ->  online softmax (exp2)  ->  O += P V [64, Dv] (f32)

Each tile arrives through TMA copies, one per page (several per tile for small pages),
`stages` tiles deep; the page ids of the next refill are loaded one tile early. Pages
that go straight to wgmma refill a K slot as soon as Q K^T has read it and the V slot
after P V (with P in registers: 4 % faster at one CTA per SM, session 17). Q is
staged while the first tiles load (float8 pages with e4m3 Q·Kᵀ: before the ring is
allocated, which measured faster there, `DecodeConfig.q_first`). bf16/fp16
pages whose size is a multiple of 8 are copied straight into the swizzled layout wgmma
reads; float8 pages, smaller pages and variants with a key transform are copied raw and
converted through registers (float8 to float16; the per-head scales are folded into the
logits and the output). Variants are traced in on the [64, 64] logits tile with a
`Context` of full-tile arrays; a band (sliding window) skips the tiles left of it.

A unit that is its whole sequence writes o and lse; otherwise units write partials
(o, lse) and a merge kernel combines each sequence's partials exactly (lse-weighted).
Rows that see no key get o = 0, lse = -inf. kv_lens are clipped to [0, M * page_size]
and page ids to [0, P), so reads never leave the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jattn import tuned
from jattn.cache import is_float8
from jattn.pallas.prefill import mma_acc, online_softmax
from jattn.plan import DecodePlan, block_kv, plan_decode  # noqa: F401  (re-exported)
from jattn.variants import Context, Variant, kernel_trace_reason

ROWS = 64                      # wgmma M: query heads of one kv head, padded
LOG2E = math.log2(math.e)
SMEM_BUDGET = 110 * 1024       # two CTAs per SM (228 KiB per SM on Hopper)
MERGE_RING_BYTES = 160 * 1024  # partials in flight per merge CTA
TMA_ALIGN = 128                # shared-memory destination alignment of a TMA copy (bytes)
QMAX = 384.0                   # |c q| of a float8-split query row (e4m3 max is 448)


# ----------------------------------------------------------------------------- tiles

def compute_dtype(q_dtype, kv_dtype):
  """Operand dtype of the tensor-core products: the query dtype, or float16 for float8
  pages (the hardware converts float8 to float16 only; e4m3/e5m2 values are exact in it)."""
  return jnp.dtype(jnp.float16) if is_float8(kv_dtype) else jnp.dtype(q_dtype)


def _staged(kv_dtype, q_dtype, page_size, variant) -> bool:
  """True when K/V go through registers (dequantize, relayout or key transform)."""
  return (jnp.dtype(kv_dtype) != jnp.dtype(q_dtype) or page_size % 8 != 0
          or variant.key_transform is not None)


def _ring_tiled(kv_dtype, page_size, d, dv, variant) -> bool:
  """True when the TMA copies land in the swizzled layout wgmma reads (8-row pages,
  rows a multiple of 32 bytes). Not for float8 with a key transform: the transform
  needs K in the wgmma register layout, which the 8-bit swizzled loads do not give."""
  kvb = jnp.dtype(kv_dtype).itemsize
  if kvb == 1 and variant.key_transform is not None:
    return False
  return page_size % 8 == 0 and (d * kvb) % 32 == 0 and (dv * kvb) % 32 == 0


def _qk8(kv_dtype, page_size, d, dv, variant) -> bool:
  """True when Q·Kᵀ runs on float8 K straight from the ring (float8 pages in the swizzled
  layout, no key transform); only V is converted through registers."""
  return (is_float8(kv_dtype) and variant.key_transform is None
          and _ring_tiled(kv_dtype, page_size, d, dv, variant))


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Knobs of `decode`; None keeps the heuristic. The plan knobs apply to plans made
  inside `decode` (plan=None); a host plan keeps its own split. With no config, `decode`
  takes the one tuned for its shape on this GPU (`jattn.tuned`) when there is one."""

  stages: Optional[int] = None         # TMA pipeline depth (None: the most that fit)
  num_sms: Optional[int] = None        # for plans made inside `decode`
  waves: Optional[int] = None          # plan_decode's waves (None: its default)
  min_unit_keys: Optional[int] = None  # plan_decode's min_unit_keys (default 256)
  float8_qk: Optional[bool] = None     # False: convert float8 K to f16 as V (A/B runs)
  q_first: Optional[bool] = None       # stage Q before the ring is allocated (None:
                                       # for float8 pages with e4m3 Q·Kᵀ, see _q_first)


def _smem_bytes(stages, bk, d, dv, q_dtype, kv_dtype, staged, qk8=False,
                q_first=False) -> int:
  """Shared memory of one decode CTA. The Q staging buffer lives while the ring does
  (the first tiles load while Q is staged), or before it (q_first: 16 KiB less at D128).
  qk8: Q is two e4m3 tiles (as many bytes as one f16 tile) and only V is tiled."""
  qb, kb = compute_dtype(q_dtype, kv_dtype).itemsize, jnp.dtype(kv_dtype).itemsize
  q_tile = ROWS * d * qb
  ring = stages * bk * (d + dv) * (kb if staged else qb)
  tiled = bk * ((0 if qk8 else d) + dv) * qb if staged else 0
  q_raw = ROWS * d * jnp.dtype(q_dtype).itemsize
  epilogue = ROWS * dv * 4 + ROWS * 4
  if q_first:
    return q_tile + max(q_raw, ring + tiled, epilogue) + 1024
  return q_tile + max(ring + tiled + q_raw, epilogue) + 1024


def _q_first(cfg, qk8) -> bool:
  """Stage Q before the ring (and its first loads) instead of while the first tiles
  load. Default for the e4m3 Q·Kᵀ kernel only: with a 2-deep ring it ran 7 % faster
  there (0.135 vs 0.145 ms, H200, decode probe run 8), and made no difference to bf16."""
  if cfg is not None and cfg.q_first is not None:
    return cfg.q_first
  return qk8


def _stages(cfg, bk, d, dv, q_dtype, kv_dtype, staged, qk8=False) -> int:
  """The deepest ring (up to 4) that leaves room for two CTAs per SM; at least 2. The
  e4m3 Q·Kᵀ kernel with Q staged first takes 2 (the depth measured in decode probe run 8;
  deeper rings with Q first were not timed)."""
  if cfg is not None and cfg.stages is not None:
    return cfg.stages
  q_first = _q_first(cfg, qk8)
  if qk8 and q_first:
    return 2
  for s in (4, 3):
    if _smem_bytes(s, bk, d, dv, q_dtype, kv_dtype, staged, qk8, q_first) <= SMEM_BUDGET:
      return s
  return 2


# ----------------------------------------------------------------------------- checks

def _misaligned_pages(page_size, bk, d, dv, kv_dtype) -> Optional[str]:
  """Why the TMA copies of a page's rows (bk-key tiles) would land off TMA_ALIGN in the
  shared-memory ring (each copy starts at a multiple of its own size), or None."""
  rows, kv = min(page_size, bk), jnp.dtype(kv_dtype)
  for name, n in (("head_dim", d), ("v_head_dim", dv)):
    if rows * n * kv.itemsize % TMA_ALIGN:
      return (f"one page's rows of {name} are {rows * n * kv.itemsize} bytes; each TMA copy "
              f"lands at a multiple of that in shared memory, which must be {TMA_ALIGN}-byte "
              f"aligned (page_size {page_size}, {name} {n}, {kv.name})")
  return None


def supports(spec) -> Optional[str]:
  if spec.op != "decode":
    return f"serves decode, not {spec.op}"
  if jnp.dtype(spec.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"needs bf16/fp16 queries (tensor cores), got {jnp.dtype(spec.dtype).name}"
  kv = jnp.dtype(spec.kv_dtype)
  if kv != jnp.dtype(spec.dtype) and not is_float8(kv):
    return (f"pages must be the query dtype or float8, got {kv.name} pages with "
            f"{jnp.dtype(spec.dtype).name} queries")
  for name, d in (("head_dim", spec.head_dim), ("v_head_dim", spec.v_head_dim)):
    if d % 16 or not 16 <= d <= 256:
      return f"{name} must be a multiple of 16 in [16, 256], got {d}"
  G = spec.num_q_heads // spec.num_kv_heads
  if G > ROWS:
    return f"at most {ROWS} query heads per kv head, got {G}"
  bk = block_kv(spec.page_size)
  if bk is None:
    return f"page_size must divide 64 or be a multiple of 64, got {spec.page_size}"
  why = _misaligned_pages(spec.page_size, bk, spec.head_dim, spec.v_head_dim, kv)
  if why is not None:
    return why
  variant = spec.variant or Variant()
  why = kernel_trace_reason(variant, spec.head_dim)
  if why is not None:
    return why
  staged = _staged(spec.kv_dtype, spec.dtype, spec.page_size, variant)
  if _smem_bytes(2, bk, spec.head_dim, spec.v_head_dim, spec.dtype, spec.kv_dtype,
                 staged) > 220 * 1024:
    return "tiles do not fit in shared memory"
  return None


# ----------------------------------------------------------------------------- kernel

def _full(shape, x, dtype=jnp.int32):
  return jnp.full(shape, x, dtype)


def _iota(shape, dim):
  return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=plgpu.Layout.WGMMA)


def _decode_kernel(q_ref, k_ref, v_ref, pt_ref, lens_ref, units_ref, scale_ref,
                   params_ref, o_ref, lse_ref, q_smem, q_bar, *,
                   G, bk, stages, sm_scale, variant, param_names, param_dtypes,
                   staged, ring_tiled, qk8, final, fold_k_scale, fold_v_scale, q_first,
                   interpret):
  """One (kv head, unit): attention of the unit's keys for the kv head's G query heads.
  `final`: the unit is its whole sequence, write o / lse; else write a partial.
  `q_first`: stage Q before the ring is allocated (less shared memory, the first tiles
  load after Q instead of during it).
  `qk8`: float8 K is read by the tensor cores straight from the ring; q_smem is then the
  pair (hi, lo) of e4m3 tiles of the scaled query (see `stage_q`).
  `interpret`: P V as a plain dot (the GPU interpreter has no wgmma with a register
  operand, see `prefill.mma_acc`)."""
  P, ps, Nkv = k_ref.shape[:3]
  M = pt_ref.shape[1]
  D, Dv = q_ref.shape[1], v_ref.shape[3]   # q_ref: the queries as rows [B * Nq, D]
  Nq = G * Nkv
  cdt = (jnp.dtype(jnp.float16) if qk8 else q_smem.dtype)   # operand dtype of P V
  w = lax.axis_index("cta")             # position in dispatch order (plan.work)
  kvh = units_ref[w, 4]
  active = units_ref[w, 0] >= 0         # a real unit: it writes even if it skips
  b = jnp.maximum(units_ref[w, 0], 0)   # every tile (empty sequence, band)
  t_lo, t_hi = units_ref[w, 1], units_ref[w, 2]
  u = units_ref[w, 3]                   # its partial's row (plan.units order)
  kv_len = jnp.clip(lens_ref[b], 0, M * ps)
  q_pos = kv_len - 1
  if variant.band is not None and variant.band[0] is not None:
    t_lo = jnp.maximum(t_lo, (q_pos - variant.band[0]) // bk)
  t_hi = jnp.minimum(t_hi, (kv_len + bk - 1) // bk)
  n = jnp.maximum(t_hi - t_lo, 0)

  copies = max(bk // ps, 1)            # TMA copies per tile and operand
  rows = min(ps, bk)                   # rows of each copy
  prefetch = copies <= 8               # page ids of the next issue ride in the loop

  def page_ids(t):
    """Page of each copy of tile t (absolute tile index in the sequence)."""
    return tuple(
        jnp.clip(pt_ref[b, jnp.minimum((t * bk + j * rows) // ps, M - 1)], 0, P - 1)
        for j in range(copies))

  def issue(t, slot, k_ring, v_ring, k_bar, v_bar, pages=None, parts="kv"):
    """Start the copies of tile t into ring slot `slot` (of K and/or V: `parts`)."""
    r0 = (t * bk) % ps if ps > bk else 0
    def one(j, page):
      if "k" in parts:
        plgpu.copy_gmem_to_smem(k_ref.at[page, pl.ds(r0, rows), kvh],
                                k_ring.at[slot, pl.ds(j * rows, rows)], k_bar.at[slot])
      if "v" in parts:
        plgpu.copy_gmem_to_smem(v_ref.at[page, pl.ds(r0, rows), kvh],
                                v_ring.at[slot, pl.ds(j * rows, rows)], v_bar.at[slot])
    if prefetch:
      for j, page in enumerate(page_ids(t) if pages is None else pages):
        one(j, page)
    else:
      @pl.loop(0, copies)
      def _(j):
        key0 = t * bk + j * rows
        one(j, jnp.clip(pt_ref[b, jnp.minimum(key0 // ps, M - 1)], 0, P - 1))

  def head_params(p_smem, shape):
    return {name: lax.broadcast_in_dim(
        plgpu.load(p_smem.at[i], layout=plgpu.Layout.WGMMA.reduce(1)), shape, [0]
    ).astype(dt) for i, (name, dt) in enumerate(zip(param_names, param_dtypes))}

  def stage_q(q_raw, p_smem):
    """Q rows 0..G-1 of a zeroed 64-row tile, transformed, into the wgmma layout.
    qk8: row r is scaled by c_r = QMAX / max|q_r| and split as c_r q_r = hi + lo, two
    e4m3 tiles (lo holds hi's rounding error, so hi + lo keeps ~8 bits like bf16);
    returns 1 / c [ROWS], else None."""
    q_raw[...] = jnp.zeros((ROWS, D), q_raw.dtype)
    plgpu.commit_smem()
    plgpu.copy_gmem_to_smem(q_ref.at[pl.ds(b * Nq + kvh * G, G)], q_raw.at[pl.ds(0, G)],
                            q_bar)
    plgpu.barrier_wait(q_bar)
    q = plgpu.load(q_raw, layout=plgpu.Layout.WGMMA, optimized=False).astype(jnp.float32)
    if variant.query_transform is not None:
      shape = (ROWS, D)
      ctx = Context(q_pos=_full(shape, q_pos), kv_pos=None,
                    head=jnp.minimum(kvh * G + _iota(shape, 0), Nq - 1),
                    batch=_full(shape, b), params=head_params(p_smem, shape))
      q = variant.query_transform(q, ctx)
    if not qk8:
      q_smem[...] = q.astype(cdt)
      plgpu.commit_smem()
      return None
    amax = jnp.max(jnp.abs(q), axis=1)
    c = jnp.where(amax > 0, QMAX / jnp.where(amax > 0, amax, 1.0), 1.0)
    qc = q * lax.broadcast_in_dim(c, q.shape, [0])
    hi = qc.astype(k_ref.dtype)
    q_smem[0][...] = hi
    q_smem[1][...] = (qc - hi.astype(jnp.float32)).astype(k_ref.dtype)
    plgpu.commit_smem()
    return 1.0 / c

  def staged_query(par_smem, par_bar):
    """`stage_q` in its own SMEM scope, once the params (a query transform may read
    them) have arrived; returns its 1 / c."""
    if param_names:
      plgpu.barrier_wait(par_bar)
    return pl.run_scoped(functools.partial(stage_q, p_smem=par_smem),
                         plgpu.SMEM((ROWS, D), q_ref.dtype))

  def main(k_ring, v_ring, k_tiled, v_tiled, k_bar, v_bar, par_smem, par_bar,
           q_inv):
    @pl.loop(0, jnp.minimum(n, stages))
    def _(s):
      issue(t_lo + s, s, k_ring, v_ring, k_bar, v_bar)

    if not q_first:   # Q is staged while the first tiles load
      q_inv = staged_query(par_smem, par_bar)

    scale = sm_scale * (scale_ref[0, kvh] if fold_k_scale else 1.0)
    shape = (ROWS, bk)
    if qk8:   # the logits of row r carry the factor c_r of its query
      scale = lax.broadcast_in_dim(q_inv * scale, shape, [0])
    cols = _iota(shape, 1)
    head = jnp.minimum(kvh * G + _iota(shape, 0), Nq - 1)
    params = head_params(par_smem, shape)
    to_regs = (plgpu.Layout.WGMMA_8BIT if ring_tiled and k_ring.dtype.itemsize == 1
               else plgpu.Layout.WGMMA)     # 8-bit rows: 4-byte swizzled loads

    def body(i, carry):
      acc, m_i, l_i, pages = carry
      slot = lax.rem(i, stages)
      t = t_lo + i
      refill = i + stages < n
      # Page ids for the refill of the next iteration: loaded now, used one tile later.
      next_pages = page_ids(t + stages + 1) if prefetch else ()
      plgpu.barrier_wait(k_bar.at[slot])
      if staged:   # else V is waited for just before P V
        plgpu.barrier_wait(v_bar.at[slot])
      if qk8:      # K stays float8 in the ring; V: ring -> registers (to f16) -> tile
        k_view, v_view = k_ring.at[slot], v_tiled
      elif staged:   # ring slot -> registers (dequantize / relayout / transform) -> tiles
        k_view, v_view = k_tiled, v_tiled
        k = plgpu.load(k_ring.at[slot], layout=to_regs, optimized=ring_tiled)
        v = plgpu.load(v_ring.at[slot], layout=to_regs, optimized=ring_tiled)
        k, v = _to(k, cdt), _to(v, cdt)
        if variant.key_transform is not None:
          kshape = (bk, D)
          ctx = Context(q_pos=None, kv_pos=t * bk + _iota(kshape, 0),
                        head=_full(kshape, kvh), batch=_full(kshape, b))
          k = k.astype(jnp.float32)
          if not fold_k_scale and fold_v_scale:
            k = k * scale_ref[0, kvh]
          k = variant.key_transform(k, ctx).astype(cdt)
        k_view[...] = k
        v_view[...] = v
        plgpu.commit_smem()   # also: every thread is done reading the ring slot

        @pl.when(refill)
        def _():
          issue(t + stages, slot, k_ring, v_ring, k_bar, v_bar, pages or None)
      else:
        k_view, v_view = k_ring.at[slot], v_ring.at[slot]

      def qk(acc_ref):
        if qk8:
          for part in q_smem:      # c Q Kᵀ = hi Kᵀ + lo Kᵀ, e4m3 on the tensor cores
            plgpu.wgmma(acc_ref, part, k_view.transpose((1, 0)))
          # V is converted while the products run (v_tiled: the last P V has finished).
          v = plgpu.load(v_ring.at[slot], layout=to_regs, optimized=True)
          v_tiled[...] = _to(v, cdt)
        else:
          plgpu.wgmma(acc_ref, q_smem, k_view.transpose((1, 0)))
        return acc_ref[...]
      s = pl.run_scoped(qk, plgpu.ACC(shape, jnp.float32)) * scale
      if not staged:   # the K slot is read: refill it now, V once P V has read it
        @pl.when(refill)
        def _():
          issue(t + stages, slot, k_ring, v_ring, k_bar, v_bar, pages or None, parts="k")
      kv_pos = t * bk + cols
      ctx = Context(q_pos=_full(shape, q_pos), kv_pos=kv_pos, head=head,
                    batch=_full(shape, b), params=params)
      if variant.logits_transform is not None:
        s = variant.logits_transform(s, ctx).astype(jnp.float32)
      keep = kv_pos < kv_len
      if variant.logits_mask is not None:
        keep = jnp.logical_and(keep, variant.logits_mask(ctx))
      s = jnp.where(keep, s * LOG2E, -jnp.inf)
      m_new, alpha, p, l_i = online_softmax(s, m_i, l_i)
      if qk8:
        plgpu.commit_smem()   # the V tile, and every thread is done with the slot

        @pl.when(refill)
        def _():
          issue(t + stages, slot, k_ring, v_ring, k_bar, v_bar, pages or None)

      if not staged:
        plgpu.barrier_wait(v_bar.at[slot])
      acc = mma_acc(acc * lax.broadcast_in_dim(alpha, acc.shape, [0]), p.astype(cdt),
                    v_view, interpret)

      if not staged:
        @pl.when(refill)
        def _():
          issue(t + stages, slot, k_ring, v_ring, k_bar, v_bar, pages or None, parts="v")
      return acc, m_new, l_i, next_pages

    acc = plgpu.layout_cast(jnp.zeros((ROWS, Dv), jnp.float32), plgpu.Layout.WGMMA)
    m_i = plgpu.layout_cast(jnp.full((ROWS,), -jnp.inf, jnp.float32),
                            plgpu.Layout.WGMMA.reduce(1))
    l_i = plgpu.layout_cast(jnp.zeros((ROWS,), jnp.float32), plgpu.Layout.WGMMA.reduce(1))
    pages = page_ids(t_lo + stages) if prefetch else ()
    acc, m_i, l_i, _ = lax.fori_loop(0, n, body, (acc, m_i, l_i, pages))
    return acc, m_i, l_i

  def epilogue(acc, m_i, l_i, o_stage, lse_stage):
    ok = l_i > 0
    l_safe = jnp.where(ok, l_i, 1.0)
    inv = 1.0 / l_safe
    if fold_v_scale:
      inv = inv * scale_ref[1, kvh]
    o_stage[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(o_stage.dtype)
    lse_stage[...] = jnp.where(ok, (m_i + jnp.log2(l_safe)) / LOG2E, -jnp.inf)
    plgpu.commit_smem()
    if final:
      plgpu.copy_smem_to_gmem(o_stage.at[pl.ds(0, G)], o_ref.at[b, pl.ds(kvh * G, G)])
      plgpu.copy_smem_to_gmem(lse_stage.at[pl.ds(0, lse_ref.shape[2])], lse_ref.at[b, kvh])
    else:
      plgpu.copy_smem_to_gmem(o_stage.at[pl.ds(0, o_ref.shape[2])], o_ref.at[u, kvh])
      plgpu.copy_smem_to_gmem(lse_stage, lse_ref.at[u, kvh])
    plgpu.wait_smem_to_gmem(0)

  def unit(par_smem, par_bar):
    """The variant's per-head params (when it has any), Q (here when q_first), then the
    ring and the key loop (`main`), then the epilogue, each in its own SMEM scope."""
    if param_names:
      plgpu.copy_gmem_to_smem(params_ref.at[kvh], par_smem, par_bar)
    q_inv = staged_query(par_smem, par_bar) if q_first else None
    ring_dtype = k_ref.dtype if staged else cdt
    k_tf, v_tf = _tiled(cdt, D), _tiled(cdt, Dv)
    if ring_tiled:
      ring_tf = (_tiled(ring_dtype, D), _tiled(ring_dtype, Dv))
    else:
      ring_tf = ((), ())
    tiled = ((plgpu.SMEM((bk, D), cdt, transforms=k_tf) if not qk8 else None,
              plgpu.SMEM((bk, Dv), cdt, transforms=v_tf)) if staged else (None, None))
    acc, m_i, l_i = pl.run_scoped(
        functools.partial(main, par_smem=par_smem, par_bar=par_bar, q_inv=q_inv),
        plgpu.SMEM((stages, bk, D), ring_dtype, transforms=ring_tf[0]),
        plgpu.SMEM((stages, bk, Dv), ring_dtype, transforms=ring_tf[1]),
        *tiled,
        plgpu.Barrier(num_arrivals=copies, num_barriers=stages),
        plgpu.Barrier(num_arrivals=copies, num_barriers=stages))
    pl.run_scoped(functools.partial(epilogue, acc, m_i, l_i),
                  plgpu.SMEM((ROWS, Dv), o_ref.dtype), plgpu.SMEM((ROWS,), jnp.float32))

  @pl.when(active)
  def _():
    if param_names:
      pl.run_scoped(unit, plgpu.SMEM((params_ref.shape[1], ROWS), jnp.float32),
                    plgpu.Barrier())
    else:
      unit(None, None)


def _to(x, dtype):
  """Cast through float32 where the hardware has no direct conversion."""
  if x.dtype == dtype:
    return x
  if is_float8(x.dtype) and dtype == jnp.float16:
    return x.astype(dtype)
  return x.astype(jnp.float32).astype(dtype)


def _tiled(dtype, cols):
  """Transforms of a wgmma operand in SMEM: 8-row tiles as wide as the widest swizzle
  (128, 64 or 32 bytes) that divides a row of `cols` elements."""
  size = jnp.dtype(dtype).itemsize
  swizzle = next(s for s in (128, 64, 32) if cols * size % s == 0)
  return (plgpu.TilingTransform((8, swizzle // size)), plgpu.SwizzleTransform(swizzle))


def _merge_kernel(bu_ref, o_part_ref, lse_part_ref, o_ref, lse_ref, o_raw, l_raw, bars,
                  o_stage, lse_stage, *, G):
  """Merge the partials of sequence b, kv head kvh (units bu[b]:bu[b+1]), with the
  next `slots` partials in flight (a long sequence has many)."""
  kvh = lax.axis_index("kvh")
  b = lax.axis_index("batch")
  u0, u1 = bu_ref[b], bu_ref[b + 1]
  Dv = o_ref.shape[2]
  slots = o_raw.shape[0]

  def fetch(u, slot):   # rows 0..G8-1 of a swizzled 64-row tile (the rest: discarded)
    plgpu.copy_gmem_to_smem(o_part_ref.at[u, kvh],
                            o_raw.at[slot, pl.ds(0, o_part_ref.shape[2])], bars.at[slot])
    plgpu.copy_gmem_to_smem(lse_part_ref.at[u, kvh], l_raw.at[slot], bars.at[slot])

  @pl.loop(0, jnp.minimum(u1 - u0, slots))
  def _(s):
    fetch(u0 + s, s)

  def body(u, carry):
    acc, m_i, d_i = carry
    slot = lax.rem(u - u0, slots)
    plgpu.barrier_wait(bars.at[slot])
    o_u = plgpu.load(o_raw.at[slot], layout=plgpu.Layout.WGMMA)
    l_u = plgpu.load(l_raw.at[slot], layout=plgpu.Layout.WGMMA.reduce(1))

    @pl.when(u + slots < u1)
    def _():
      plgpu.commit_smem()  # every thread has read the slot
      fetch(u + slots, slot)

    m_new = jnp.maximum(m_i, l_u)
    m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    a, w = jnp.exp(m_i - m_safe), jnp.exp(l_u - m_safe)
    acc = (acc * lax.broadcast_in_dim(a, acc.shape, [0])
           + o_u * lax.broadcast_in_dim(w, acc.shape, [0]))
    return acc, m_new, d_i * a + w

  acc = plgpu.layout_cast(jnp.zeros((ROWS, Dv), jnp.float32), plgpu.Layout.WGMMA)
  m_i = plgpu.layout_cast(jnp.full((ROWS,), -jnp.inf, jnp.float32),
                          plgpu.Layout.WGMMA.reduce(1))
  d_i = plgpu.layout_cast(jnp.zeros((ROWS,), jnp.float32), plgpu.Layout.WGMMA.reduce(1))
  acc, m_i, d_i = lax.fori_loop(u0, u1, body, (acc, m_i, d_i))
  ok = d_i > 0
  d_safe = jnp.where(ok, d_i, 1.0)
  o = acc * lax.broadcast_in_dim(1.0 / d_safe, acc.shape, [0])
  o_stage[...] = o.astype(o_stage.dtype)
  lse_stage[...] = jnp.where(ok, m_i + jnp.log(d_safe), -jnp.inf)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(o_stage.at[pl.ds(0, G)], o_ref.at[b, pl.ds(kvh * G, G)])
  plgpu.copy_smem_to_gmem(lse_stage.at[pl.ds(0, lse_ref.shape[2])], lse_ref.at[b, kvh])
  plgpu.wait_smem_to_gmem(0)


# ----------------------------------------------------------------------------- entry

def _interpret_params(interpret):
  if interpret is True:
    return plgpu.InterpretGPUParams()
  return interpret or None


def _variant_params(variant: Variant, Nkv: int, G: int):
  """Per-query-head params as float32 [Nkv, n, 64] (row r of kv head k is head k*G+r)."""
  names = tuple(sorted(variant.params))
  if not names:
    return names, (), jnp.zeros((Nkv, 1, ROWS), jnp.float32)
  vals = [jnp.asarray(variant.params[k]) for k in names]
  stacked = jnp.stack([v.astype(jnp.float32).reshape(Nkv, G) for v in vals], axis=1)
  stacked = jnp.pad(stacked, ((0, 0), (0, 0), (0, ROWS - G)))
  return names, tuple(v.dtype for v in vals), stacked


def decode(q, cache, page_table, kv_lens, *, sm_scale: float, variant: Variant,
           plan: Optional[DecodePlan] = None, interpret=False,
           config: Optional[DecodeConfig] = None):
  """Paged decode (see module docstring). Returns (o [B,Nq,Dv] q.dtype, lse [B,Nq] f32)."""
  B, Nq, D = q.shape
  P, ps, Nkv, _ = cache.k_pages.shape
  Dv = cache.v_pages.shape[3]
  G = Nq // Nkv
  bk = block_kv(ps)
  if config is None:
    found = tuned.lookup(tuned.bucket(
        "decode", dtype=q.dtype, kv_dtype=cache.dtype, head_dim=D, v_head_dim=Dv,
        num_q_heads=Nq, num_kv_heads=Nkv, batch=B, q_len=1, kv_len=page_table.shape[1] * ps,
        page_size=ps, variant=variant))
    config = DecodeConfig(**found) if found is not None else None
  if plan is None:   # made here from the device lengths (a few small XLA ops)
    grid = dict(num_sms=config.num_sms if config and config.num_sms else None)
    for knob in ("waves", "min_unit_keys"):
      if config is not None and getattr(config, knob) is not None:
        grid[knob] = getattr(config, knob)
    if interpret:     # every CTA is simulated: one unit slot per sequence, plus one
      grid = dict(num_sms=1, ctas_per_sm=1, waves=1)
    plan = plan_decode(kv_lens, ps, Nq, Nkv, D, max_kv_len=page_table.shape[1] * ps,
                       **grid)
  if plan.block_kv != bk:
    raise ValueError(f"jattn.decode: plan was made for {plan.block_kv}-key tiles, the "
                     f"cache's page_size {ps} needs {bk}; rebuild it with page_size={ps}")
  why = None if interpret else _misaligned_pages(ps, bk, D, Dv, cache.dtype)
  if why is not None:   # what `supports` declines, for direct callers: TMA would fault
    raise ValueError(f"decode kernel: {why}")
  staged = _staged(cache.dtype, q.dtype, ps, variant)
  f8 = is_float8(cache.dtype)
  cdt = compute_dtype(q.dtype, cache.dtype)
  qk8 = _qk8(cache.dtype, ps, D, Dv, variant) and not (config and config.float8_qk is False)
  stages = _stages(config, bk, D, Dv, q.dtype, cache.dtype, staged, qk8)
  q_first = _q_first(config, qk8)
  scales = (jnp.stack([cache.k_scale, cache.v_scale]).astype(jnp.float32) if f8
            else jnp.ones((2, Nkv), jnp.float32))
  names, dtypes, params = _variant_params(variant, Nkv, G)
  U = plan.max_units
  work = plan.work
  if work is None or work.shape[0] != U * Nkv:   # by hand: kv-head-major, units in order
    c = jnp.arange(U * Nkv, dtype=jnp.int32)
    work = jnp.concatenate([plan.units[c % U], (c % U)[:, None], (c // U)[:, None]], axis=1)
  GL = -(-G // 4) * 4      # lse rows per kv head as written (16-byte TMA rows)
  interp = _interpret_params(interpret)
  final_types = (jax.ShapeDtypeStruct((B, Nq, Dv), q.dtype),
                 jax.ShapeDtypeStruct((B, Nkv, GL), jnp.float32))

  if qk8:
    q_tiles = tuple(plgpu.SMEM((ROWS, D), cache.dtype, transforms=_tiled(cache.dtype, D))
                    for _ in range(2))
  else:
    q_tiles = plgpu.SMEM((ROWS, D), cdt, transforms=_tiled(cdt, D))
  kernel = functools.partial(
      _decode_kernel, G=G, bk=bk, stages=stages, sm_scale=float(sm_scale),
      variant=variant, param_names=names, param_dtypes=dtypes, staged=staged,
      ring_tiled=_ring_tiled(cache.dtype, ps, D, Dv, variant), qk8=qk8, final=not plan.split,
      fold_k_scale=f8 and variant.key_transform is None,
      fold_v_scale=f8, q_first=q_first, interpret=bool(interpret))
  o, lse = plgpu.kernel(
      kernel,
      out_type=(final_types if not plan.split else
                (jax.ShapeDtypeStruct((U, Nkv, -(-G // 8) * 8, Dv), jnp.float32),
                 jax.ShapeDtypeStruct((U, Nkv, ROWS), jnp.float32))),
      scratch_types=(q_tiles, plgpu.Barrier()),
      grid=(U * Nkv,), grid_names=("cta",),
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=interp,
  )(q.reshape(B * Nq, D), cache.k_pages, cache.v_pages, page_table, kv_lens, work,
    scales, params)

  if plan.split:
    slot_bytes = ROWS * (Dv + 1) * 4
    slots = max(2, min(8, MERGE_RING_BYTES // slot_bytes))
    o, lse = plgpu.kernel(
        functools.partial(_merge_kernel, G=G),
        out_type=final_types,
        scratch_types=(plgpu.SMEM((slots, ROWS, Dv), jnp.float32,
                                  transforms=_tiled(jnp.float32, Dv)),
                       plgpu.SMEM((slots, ROWS), jnp.float32),
                       plgpu.Barrier(num_arrivals=2, num_barriers=slots),
                       plgpu.SMEM((ROWS, Dv), q.dtype),
                       plgpu.SMEM((ROWS,), jnp.float32)),
        grid=(Nkv, B), grid_names=("kvh", "batch"),
        interpret=interp,
    )(plan.batch_units, o, lse)
  return o, lse[:, :, :G].reshape(B, Nq)
