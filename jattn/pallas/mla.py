"""Multi-head latent attention (absorbed MLA) over a paged latent cache: a Pallas Mosaic
GPU kernel.

Layout. q_nope [B,T,H,R], q_pe [B,T,H,Dr] (bf16/fp16; R = kv_lora_rank, 512 and Dr = 64
in DeepSeek-V3); ckv pages [P,ps,R], kpe pages [P,ps,Dr] in q's dtype; page_table int32
[B,M]; kv_lens int32 [B]. Output o [B,T,H,R] (q's dtype), lse [B,T,H] float32 (natural
log). The T queries of sequence b are its last T tokens, causal among themselves
(bottom-right aligned): row t sees keys s <= kv_len - T + t. Rows that see no key give
o = 0, lse = -inf.

Math. One kv head whose key is [ckv, kpe] (576 wide) and whose value is ckv itself:
  S = sm_scale * (q_nope ckv^T + q_pe kpe^T),  o = softmax(S) ckv.
Each 64-key tile of ckv/kpe is loaded once (TMA: per page, the two column halves of ckv
and kpe) and is both the key of S and the value of P V.

Kernel. The (t, h) query rows of a sequence, t-major, are the M rows of the wgmma: one CTA
takes 64 of them (fewer when T*H < 64: rows are padded to a multiple of 8, or of 64 above
64, by the wrapper) for one sequence and one key split. Three warpgroups:
  * warpgroup 2 (producer, 40 registers) TMA-loads Q once and the ckv/kpe tiles into a
    `stages`-deep ring (2 at R = 512: Q, two tiles and P fill the 227 KB of SMEM),
    refilling a slot once both consumers released it;
  * warpgroups 0 and 1 (consumers) each own half of the value columns (R/2 = 256 f32
    accumulator columns: a 64 x 512 f32 accumulator does not fit one warpgroup's
    registers).
  * Shared-P schedule (default): warpgroup 0 computes S = Q K^T [64, 64] (three wgmmas
    over the R/2, R/2 and Dr column blocks) and the online softmax (base 2), hands P
    (bf16) and the rows' rescale alpha to warpgroup 1 through SMEM (P ready / P free
    barriers), and runs O_0 += P V_0 with P from registers; warpgroup 1 runs
    O_1 = alpha O_1 + P V_1 (P from SMEM), overlapping warpgroup 0's next S.
  * Both-compute-S schedule (`MLAConfig(share_p=False)`, or when P does not fit): each
    consumer computes S and the softmax itself: no hand-off, 1.53x the tensor work
    (2*576 + 512 instead of 576 + 512 per key and row); 20 % slower at B64 H128 on an
    H100 (benchmarks/NOTES.md).
The output leaves through Q's shared-memory buffer (each consumer its column half) once
both consumers are past their last product; warpgroup 1 takes 1/l from warpgroup 0.

Split-K. When batch x row blocks leave SMs idle, the keys of each sequence are cut into
`splits` equal ranges of tiles; each CTA writes a partial (o in q's dtype, lse) and XLA
merges them (lse-weighted). The two benchmark shapes (B64 H128, B128 H16) fill an H100
without splitting.

Interpret mode (CPU): P V (a register operand) is a plain dot there (`prefill.mma_acc`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jattn.cache import is_float8
from jattn.pallas.prefill import interpret_params, mma_acc, online_softmax

ROWS = 64                      # wgmma M: query rows (t, h) of one CTA
BK = 64                        # keys per tile
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
SMEM_LIMIT = 227 * 1024 - 256  # dynamic SMEM per CTA on Hopper (227 KiB), some slack
_WGMMA = plgpu.Layout.WGMMA
_ROW = plgpu.Layout.WGMMA.reduce(1)


@dataclasses.dataclass(frozen=True)
class MLAConfig:
  """Knobs of `mla_decode`; None keeps the heuristic."""

  stages: Optional[int] = None   # ring depth (None: the deepest that fits, at most 4)
  splits: Optional[int] = None   # key splits per sequence (None: fill the SMs)
  share_p: Optional[bool] = None  # shared-P schedule (None: when it fits in SMEM)


# ----------------------------------------------------------------------------- geometry

def row_blocks(T: int, H: int) -> tuple[int, int]:
  """(rows per CTA, padded rows per sequence) for T*H query rows."""
  rows = T * H
  if rows <= ROWS:
    rb = -(-rows // 8) * 8
    return rb, rb
  return ROWS, -(-rows // ROWS) * ROWS


def _smem_bytes(stages: int, R: int, Dr: int, itemsize: int, share_p: bool) -> int:
  """Q, the ring, lse; with share_p also P [64, 64] and two row vectors; barriers."""
  share = ROWS * BK * itemsize + ROWS * 4 if share_p else 0
  return (ROWS + stages * BK) * (R + Dr) * itemsize + ROWS * 4 + share + 256


def _schedule(R: int, Dr: int, itemsize: int, cfg: "MLAConfig") -> tuple[int, bool]:
  """(stages, share_p): the deepest ring (2..4) that fits, shared P when it fits too
  (it is preferred over a deeper ring). Shared P needs R a multiple of 128: below that,
  Mosaic GPU finds no layout for the follower's SMEM-operand wgmma (seen lowering R = 64,
  96, 160, 192 for CUDA)."""
  if cfg.share_p and R % 128:
    raise ValueError(f"MLAConfig(share_p=True) needs the latent dim R to be a multiple of "
                     f"128, got {R}; leave share_p=None to pick the schedule")
  shares = ((cfg.share_p,) if cfg.share_p is not None
            else (True, False) if R % 128 == 0 else (False,))
  for share in shares:
    for s in ((cfg.stages,) if cfg.stages else (4, 3, 2)):
      if _smem_bytes(s, R, Dr, itemsize, share) <= SMEM_LIMIT:
        return s, share
  return cfg.stages or 2, shares[-1]


def _page_ok(ps: int) -> bool:
  return ps % BK == 0 or (BK % ps == 0 and ps % 8 == 0)


def supports(spec) -> Optional[str]:
  if spec.op != "mla_decode":
    return f"serves mla_decode, not {spec.op}"
  dt = jnp.dtype(spec.dtype)
  if dt not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"needs bf16/fp16 queries (tensor cores), got {dt.name}"
  kv = jnp.dtype(spec.kv_dtype)
  if is_float8(kv):
    return "float8 latent cache: not in the kernel yet (the xla implementation serves it)"
  if kv != dt:
    return f"latent cache must be the query dtype, got {kv.name} with {dt.name} queries"
  R, Dr = spec.v_head_dim, spec.head_dim - spec.v_head_dim
  if R % 32 or not 32 <= R <= 512:
    return f"latent dim R must be a multiple of 32 in [32, 512], got {R}"
  if Dr % 16 or not 16 <= Dr <= 256:
    return f"rope dim must be a multiple of 16 in [16, 256], got {Dr}"
  if not _page_ok(spec.page_size):
    return (f"page_size must be a multiple of {BK}, or a multiple of 8 dividing {BK}; "
            f"got {spec.page_size}")
  if _smem_bytes(2, R, Dr, dt.itemsize, False) > SMEM_LIMIT:
    return "Q and two key tiles do not fit in shared memory"
  return None


def _tiled(shape, dtype):
  """SMEM buffer in the swizzled layout of wgmma and TMA (widest swizzle dividing a row)."""
  size = jnp.dtype(dtype).itemsize
  swizzle = next(s for s in (128, 64, 32) if shape[-1] * size % s == 0)
  return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, swizzle // size)),
                                              plgpu.SwizzleTransform(swizzle)))


def _num_sms(interpret) -> int:
  if interpret:
    return 2
  return getattr(jax.devices()[0], "core_count", None) or 132


def _splits(B: int, blocks: int, tiles: int, num_sms: int) -> int:
  """Key splits so that B * blocks * splits CTAs about fill the SMs (4+ tiles each)."""
  ctas = B * blocks
  if ctas >= num_sms // 2:
    return 1
  return max(1, min(-(-num_sms // ctas), tiles // 4))


# ----------------------------------------------------------------------------- kernel

def _kernel(qn_ref, qp_ref, ckv_ref, kpe_ref, pt_ref, lens_ref, o_ref, lse_ref,
            qn_s, qp_s, ckv_s, kpe_s, lse_s, q_bar, k_bar, free, done, *share, T, H, rb,
            rp, stages, sm_scale, interpret):
  """One CTA: rb query rows of sequence b (row block blk), key tiles of split sp.
  `share` (P tile, alpha in SMEM; P ready / P free barriers) selects the shared-P
  schedule; empty: both consumers compute S."""
  P, ps, R = ckv_ref.shape
  M = pt_ref.shape[1]
  R2 = R // 2
  splits = o_ref.shape[0]
  blk, sp, b = lax.axis_index("blk"), lax.axis_index("split"), lax.axis_index("b")
  wg = lax.axis_index("wg")
  kv_len = jnp.clip(lens_ref[b], 0, M * ps)
  n_all = lax.div(kv_len + BK - 1, BK)
  chunk = lax.div(n_all + splits - 1, splits)
  lo = jnp.minimum(sp * chunk, n_all)
  hi = jnp.minimum(lo + chunk, n_all)
  n = hi - lo
  row0 = b * rp + blk * rb               # first q/o row of this CTA
  copies = max(BK // ps, 1)              # TMA copies per tile and operand
  rows = min(ps, BK)
  dtype = qn_s.dtype

  def consume(role):
    """role "both": compute S and softmax, own column half `wg` of O. "lead" (wg 0):
    the same, and publish P and the row rescale alpha for "follow" (wg 1), which only
    runs P V on its half. (The half stays the traced `wg`: a constant index inside
    `run_state` does not lower.)"""
    half = wg
    plgpu.set_max_registers(232, action="increase")
    shape = (ROWS, BK)
    r = blk * rb + plgpu.broadcasted_iota(jnp.int32, shape, 0, layout=_WGMMA)
    q_pos = kv_len - T + lax.div(r, H)
    col = plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=_WGMMA)
    c = sm_scale * LOG2E
    if share:
      p_s, alpha_s, p_ready, p_free = share   # alpha_s ends holding 1 / l

    def softmax_step(j, carry):
      acc, m_i, l_i = carry
      slot = lax.rem(j - lo, stages)
      plgpu.barrier_wait(k_bar.at[slot])

      def qk(acc_ref):
        plgpu.wgmma(acc_ref, qn_s.at[0], ckv_s.at[slot, 0].T)
        plgpu.wgmma(acc_ref, qn_s.at[1], ckv_s.at[slot, 1].T)
        plgpu.wgmma(acc_ref, qp_s, kpe_s.at[slot].T)
        return acc_ref[...]

      s = pl.run_scoped(qk, plgpu.ACC(shape, jnp.float32))
      kv_pos = j * BK + col
      keep = kv_pos < kv_len
      if T > 1:
        keep = jnp.logical_and(keep, kv_pos <= q_pos)
      s = jnp.where(keep, s * c, -jnp.inf)
      m_new, alpha, p, l_i = online_softmax(s, m_i, l_i)
      p16 = p.astype(dtype)
      if role == "lead":
        @pl.when(j > lo)
        def _():
          plgpu.barrier_wait(p_free)   # the follower's last P V has read P
        p_s[...] = p16
        alpha_s[...] = alpha
        plgpu.commit_smem()
        plgpu.barrier_arrive(p_ready)
      acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
      acc = mma_acc(acc, p16, ckv_s.at[slot, half], interpret)
      plgpu.barrier_arrive(free.at[slot])
      return acc, m_new, l_i

    def follow_step(j, acc):
      slot = lax.rem(j - lo, stages)
      plgpu.barrier_wait(k_bar.at[slot])
      plgpu.barrier_wait(p_ready)
      alpha = plgpu.load(alpha_s, layout=_ROW)
      acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
      acc = _mma_smem(acc, p_s, ckv_s.at[slot, half], interpret)
      plgpu.barrier_arrive(p_free)
      plgpu.barrier_arrive(free.at[slot])
      return acc

    acc = plgpu.layout_cast(jnp.zeros((ROWS, R2), jnp.float32), _WGMMA)
    m_i = plgpu.layout_cast(jnp.full((ROWS,), -jnp.inf, jnp.float32), _ROW)
    l_i = plgpu.layout_cast(jnp.zeros((ROWS,), jnp.float32), _ROW)
    plgpu.barrier_wait(q_bar)
    if role == "follow":
      acc = lax.fori_loop(lo, hi, follow_step, acc)
    else:
      acc, m_i, l_i = lax.fori_loop(lo, hi, softmax_step, (acc, m_i, l_i))
      ok = l_i > 0
      l_safe = jnp.where(ok, l_i, 1.0)
      inv = 1.0 / l_safe
      lse = jnp.where(ok, (m_i + jnp.log2(l_safe)) * LN2, -jnp.inf)
    if role == "lead":
      @pl.when(n > 0)
      def _():
        plgpu.barrier_wait(p_free)     # the follower's last P V
      alpha_s[...] = inv
    # Both consumers are past their last read of Q: its buffer takes the output.
    plgpu.barrier_arrive(done)
    plgpu.barrier_wait(done)
    if role == "follow":
      inv = plgpu.load(alpha_s, layout=_ROW)
    out = qn_s.at[half]
    out[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(dtype)
    if role != "follow":
      @pl.when(half == 0)
      def _():
        lse_s[...] = lse
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(out.at[pl.ds(0, rb)],
                            o_ref.at[sp, pl.ds(row0, rb), pl.ds(half * R2, R2)])
    if role != "follow":
      @pl.when(half == 0)
      def _():
        plgpu.copy_smem_to_gmem(lse_s.at[pl.ds(0, rb)],
                                lse_ref.at[sp, b, pl.ds(blk * rb, rb)])
    plgpu.wait_smem_to_gmem(0)

  if share:
    pl.when(wg == 0)(functools.partial(consume, "lead"))
    pl.when(wg == 1)(functools.partial(consume, "follow"))
  else:
    pl.when(wg < 2)(functools.partial(consume, "both"))

  @pl.when(wg == 2)
  def _producer():
    plgpu.set_max_registers(40, action="decrease")
    for h in range(2):
      plgpu.copy_gmem_to_smem(qn_ref.at[pl.ds(row0, rb), pl.ds(h * R2, R2)],
                              qn_s.at[h, pl.ds(0, rb)], q_bar)
    plgpu.copy_gmem_to_smem(qp_ref.at[pl.ds(row0, rb)], qp_s.at[pl.ds(0, rb)], q_bar)

    @pl.loop(lo, hi)
    def _(j):
      g = j - lo
      slot = lax.rem(g, stages)
      r0 = lax.rem(j * BK, ps) if ps > BK else 0
      # Page ids first: their loads are in flight while the slot drains.
      pages = [jnp.clip(pt_ref[b, jnp.minimum((j * BK + i * rows) // ps, M - 1)], 0, P - 1)
               for i in range(copies)]

      @pl.when(g >= stages)
      def _():
        plgpu.barrier_wait(free.at[slot])

      for i, page in enumerate(pages):
        dst = pl.ds(i * rows, rows)
        for h in range(2):
          plgpu.copy_gmem_to_smem(ckv_ref.at[page, pl.ds(r0, rows), pl.ds(h * R2, R2)],
                                  ckv_s.at[slot, h, dst], k_bar.at[slot])
        plgpu.copy_gmem_to_smem(kpe_ref.at[page, pl.ds(r0, rows)], kpe_s.at[slot, dst],
                                k_bar.at[slot])

    @pl.loop(jnp.maximum(n - stages, 0), n)   # releases nobody waited for
    def _(g):
      plgpu.barrier_wait(free.at[lax.rem(g, stages)])


def _mma_smem(acc, a_ref, b_ref, interpret: bool):
  """acc + a_ref @ b_ref with both operands in SMEM (wgmma), waited for."""
  if interpret:
    return acc + jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32)

  def fn(acc_ref):
    plgpu.wgmma(acc_ref, a_ref, b_ref)

  return pl.run_state(fn)(plgpu.ACC.init(acc))


# ----------------------------------------------------------------------------- entry

def _merge(o, lse):
  """Exact merge of split partials: o [S,...,R], lse [S,...] -> o [...,R] f32, lse."""
  m = lse.max(axis=0)
  m_safe = jnp.where(jnp.isneginf(m), 0.0, m)
  w = jnp.exp(lse - m_safe)
  d = w.sum(axis=0)
  ok = d > 0
  o = (w[..., None] * o.astype(jnp.float32)).sum(axis=0) / jnp.where(ok, d, 1.0)[..., None]
  return o, jnp.where(ok, m_safe + jnp.log(jnp.where(ok, d, 1.0)), -jnp.inf)


def mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, page_table, kv_lens, *, sm_scale,
               ckv_scale=None, kpe_scale=None, interpret: Any = False,
               config: Optional[MLAConfig] = None):
  """Absorbed MLA (see module docstring). q_nope [B,T,H,R], q_pe [B,T,H,Dr] ->
  (o [B,T,H,R] q.dtype, lse [B,T,H] f32)."""
  if ckv_scale is not None or kpe_scale is not None:
    raise NotImplementedError("jattn.pallas.mla: float8 latent caches are served by xla")
  B, T, H, R = q_nope.shape
  Dr = q_pe.shape[-1]
  P, ps, _ = ckv_cache.shape
  M = page_table.shape[1]
  dtype = q_nope.dtype
  rb, rp = row_blocks(T, H)
  blocks = rp // rb

  def rows(x):   # [B,T,H,D] -> [B*rp, D], padded rows zero
    x = x.reshape(B, T * H, x.shape[-1])
    if rp != T * H:
      x = jnp.pad(x, ((0, 0), (0, rp - T * H), (0, 0)))
    return x.reshape(B * rp, x.shape[-1])

  cfg = config or MLAConfig()
  stages, share_p = _schedule(R, Dr, jnp.dtype(dtype).itemsize, cfg)
  tiles = -(-M * ps // BK)
  splits = cfg.splits or _splits(B, blocks, tiles, _num_sms(interpret))
  copies = max(BK // ps, 1)

  def entry(*refs):
    # Large swizzled buffers first, small ones after (each allocation is aligned).
    big = [_tiled((2, ROWS, R // 2), dtype),           # Q nope (column halves); then O
           _tiled((ROWS, Dr), dtype),                  # Q pe
           _tiled((stages, 2, BK, R // 2), dtype),     # ckv ring (column halves)
           _tiled((stages, BK, Dr), dtype)]            # kpe ring
    small = [plgpu.SMEM((ROWS,), jnp.float32)]         # lse out
    bars = [plgpu.Barrier(num_arrivals=3),             # Q loaded
            plgpu.Barrier(num_arrivals=3 * copies, num_barriers=stages),   # tile loaded
            plgpu.Barrier(num_arrivals=2, num_barriers=stages),            # slot free
            plgpu.Barrier(num_arrivals=2)]             # consumers done with Q
    if share_p:
      big.append(_tiled((ROWS, BK), dtype))            # P (lead -> follower)
      small.append(plgpu.SMEM((ROWS,), jnp.float32))   # alpha per tile; then 1 / l
      bars += [plgpu.Barrier(), plgpu.Barrier()]       # P ready, P free
    body = functools.partial(_kernel, *refs, T=T, H=H, rb=rb, rp=rp, stages=stages,
                             sm_scale=float(sm_scale), interpret=bool(interpret))

    def scoped(*s):
      s = list(s)
      qn_s, qp_s, ckv_s, kpe_s = s[:4]
      lse_s = s[len(big)]
      q_bar, k_bar, free, done = s[len(big) + len(small):][:4]
      share = (s[4], s[len(big) + 1], *s[-2:]) if share_p else ()
      body(qn_s, qp_s, ckv_s, kpe_s, lse_s, q_bar, k_bar, free, done, *share)

    pl.run_scoped(scoped, *big, *small, *bars, collective_axes="wg")

  o, lse = plgpu.kernel(
      entry,
      out_type=(jax.ShapeDtypeStruct((splits, B * rp, R), dtype),
                jax.ShapeDtypeStruct((splits, B, rp), jnp.float32)),
      grid=(blocks, splits, B),
      grid_names=("blk", "split", "b"),
      num_threads=3,
      thread_name="wg",
      # Row reductions of the wgmma layout stay inside a warp: no SMEM scratch for them.
      compiler_params=plgpu.CompilerParams(approx_math=True, reduction_scratch_bytes=0),
      interpret=interpret_params(interpret),
  )(rows(q_nope), rows(q_pe), ckv_cache, kpe_cache, page_table, kv_lens)
  o = o.reshape(splits, B, rp, R)
  if splits > 1:
    o, lse = _merge(o, lse)
    o = o.astype(dtype)
  else:
    o, lse = o[0], lse[0]
  return (o[:, :T * H].reshape(B, T, H, R), lse[:, :T * H].reshape(B, T, H))
