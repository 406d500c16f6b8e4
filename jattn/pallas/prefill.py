"""Prefill / dense attention forward: a Hopper flash-attention kernel in Pallas Mosaic GPU.

Ops served (uniform signatures of `jattn.xla`): `attention` (dense, differentiable),
`prefill` (packed queries against the paged KV cache, append semantics) and
`prefill_ragged` (packed queries against packed K/V); forward of the packed ops only.

Layouts (public API, BTNH): q [B,T,Nq,D], k [B,S,Nkv,D], v [B,S,Nkv,Dv] -> o [B,T,Nq,Dv]
(q.dtype), lse [B,T,Nq] float32 (natural log). Query head h reads kv head h // (Nq // Nkv).

Math per (row, head), as `jattn.reference`: q_pos = kv_len - q_len + t (bottom-right
aligned), s_j = logits_transform(sm_scale * q.k_j) over keys j < kv_len that pass the
variant's mask; o = softmax(s) @ v, lse = log sum exp s. Rows t >= q_len and rows that see
no key give o = 0, lse = -inf.

Kernel. A work item is 2 * block_q query rows of one head (tiles of a sequence and head
are consecutive items, so that CTAs running together share K/V tiles through L2). The
dense op runs one CTA per SM walking the items (`Config.persistent`, snake order, so
heavy and light causal tiles mix; the next item's Q and K/V load while the current one
finishes); the packed ops run one CTA per item, heaviest first (`default_config`). Three
warpgroups:
  * warpgroup 2 (producer, 40 registers): TMA-loads Q and the K/V tiles into a
    `num_stages`-deep ring of swizzled SMEM buffers, refilling a K slot once both
    consumers' Q K^T has read it and a V slot after their P V (K/V come from dense rows,
    packed rows or, page by page, from the cache);
  * warpgroups 0 and 1 (consumers, 232 registers): block_q rows each. Per KV tile:
    S = Q K^T (wgmma, Q and K in SMEM), online softmax in base 2, O += P V (wgmma, P from
    registers). A turn barrier ping-pongs the two consumers so that one's softmax runs
    under the other's matmuls (FlashAttention-3's inter-warpgroup overlap). The turn
    and the slot frees are hardware named barriers (`Signals`). Lazy rescaling
    (`Config.lazy_rescale`): a row's running max m moves only when the tile's max
    exceeds it by more than RESCALE_SLACK, so p = 2^(s' - m) <= 2^8 and O is rescaled
    only in warps where some row's m moved; l, O and lse use the same m, so the result
    is exact whichever m was used.
  * Only KV tiles inside the variant's band (`Variant.band`) and below kv_len are visited:
    this is where causal and sliding-window speed comes from. Tiles wholly inside the band
    and below kv_len run without any mask code; edge tiles (and every tile when the variant
    has a custom mask) evaluate the mask elementwise.
Without per-sequence lengths the lengths are compile-time constants (no memory load
before the first TMA), except for calls with one q tile: there every loop bound would
fold to a constant, and compiled so, some causal shapes hang on an H100 (cause inside
Mosaic GPU / ptxas unknown; `scripts/prefill_shape_probe.py` reproduces it), so `attention`
passes their lengths as data.
  * Block-sparse (`jattn.pallas.block_sparse`, a compile-time `geo.sparse`): the KV tiles
    come from per-(head, q tile) lists instead of the band, one list per consumer; the
    first `geo.shared` steps hold one tile that both consumers read.

Variants: `logits_transform` and `logits_mask` are traced into the kernel with a `Context`
built for the tile (q_pos/kv_pos int32 tiles, head/batch scalars, params gathered at the
tile's head). `query_transform` / `key_transform` act per token, so they run as an XLA
pre-pass (once per token rather than once per tile pair) before the kernel.

GQA: K/V tiles of a kv head are shared by the group's query heads through L2 (the items of
one group run back to back); prefill tiles hold 128 rows of one head, so packing heads into
a tile would not cut K/V traffic.

Packed ops: TMA tiles must start on 8-row boundaries, so packed queries are gathered into
slot-major tiles (and contiguous packed K/V into block-aligned rows) by XLA before the
kernel, and the slot-major outputs are gathered back; paged K/V need no copy (page sizes
that are multiples of 8 dividing block_kv, or multiples of block_kv).

Gradient: `jax.custom_vjp`; the forward saves lse; the backward runs the Pallas kernels in
`jattn.pallas.prefill_bwd` (head dims <= 128; wider heads use jax.vjp of the reference).

Interpret mode (CPU): the GPU interpreter has no rule for wgmma with a register operand
(P V, dS K, ...), so there those products are plain dots on the SMEM tiles (`mma_acc`),
and it runs no inline PTX, so the turn and the slot frees use mbarriers there (the same
order of events); everything else (TMA, the ring, the ping-pong) runs as compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.pallas import mosaic_gpu as plgpu
from jaxlib.mlir import ir
from jaxlib.mlir.dialects import arith, scf, vector

from jattn import tuned
from jattn.variants import Context, Variant, kernel_trace_reason

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
_WGMMA = plgpu.Layout.WGMMA
_ROW = plgpu.Layout.WGMMA.reduce(1)
DTYPES = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class Config:
  """Tile sizes. A CTA covers 2 * block_q query rows (two consumer warpgroups). The ops
  take the config tuned for their shape on this GPU (`pick_config`), else the heuristic."""

  block_q: int = 64
  block_kv: int = 128
  num_stages: int = 2
  heavy_first: bool = True   # dense op: start with the q tiles that see the most keys
  # One CTA per SM looping over work items (snake order), prefetching the next item's Q
  # and K/V (else one CTA per item). `default_config` says where each is used.
  persistent: bool = False
  # A step issues the next step's S = Q K^T right behind its P V, one wait for both
  # (`mma_acc_then_qk`). None: on for the dense op (`flash_forward`) at head dims > 128,
  # off elsewhere: on an H200 2-4.5 % faster at D256, 2-6 % slower at head dim 128 and on
  # block-sparse, 27 % at 64 (benchmarks/NOTES.md, session 20, calls 1-2). This field and
  # the next two are decided at the call (`resolve`), so tuned configs (which set only
  # the fields they search) get the same.
  early_qk: Optional[bool] = None
  # The running max moves only when a row's grows by more than RESCALE_SLACK, and O is
  # rescaled only in warps where one did (`rescale_where_grown`). None: on at Dv > 64:
  # on an H200 1-3 % faster on the D128 rows, 8 % at D256, 3-7 % on block-sparse, 5 %
  # slower at D64 (session 21, call 4).
  lazy_rescale: Optional[bool] = None
  # The step's exponentials held behind the consumer's turn (`after_turn`). None: on
  # with 256-key tiles (the dense op at head dim 64: 2.7 % faster on an H200; neutral to
  # 2 % slower with 128- and 64-key tiles; session 21, call 2).
  pin_softmax: Optional[bool] = None

  def __post_init__(self):
    if self.block_kv % 64 or self.block_q != 64:
      raise ValueError(f"prefill Config: block_kv must be a multiple of 64 (the P.V wgmma's "
                       f"K) and block_q 64, got block_kv={self.block_kv}, block_q={self.block_q}")


def default_config(head_dim: int, v_head_dim: int, interpret: Any = False,
                   op: str = "attention", kv_len: Optional[int] = None,
                   band=None) -> Config:
  """Tiles by head dim and op. The dense op (`attention`) runs persistent, q tiles in
  natural (light-first) order: on an H200, 2-14 % faster than one CTA per tile on every
  harness shape (prefill probe runs 4-5, interleaved rounds; at head dim 256 with one Q
  buffer, see `q_buffers`). The packed ops keep one CTA per item (persistent was 28 %
  slower on the append workload). Heads wider than 128 take 64-key tiles (registers).
  The dense op at head dim <= 64 takes 256-key tiles, three deep, unless the variant's
  band (`band`, e.g. causal or a window) leaves rows at most 2048 visible keys (`kv_len`;
  the same answer for a whole tuning length bucket): on an H100 256 keys were 7-10 %
  faster non-causal at T 1024-8192, 2-9 % faster causal at T >= 4096, and 1.5-4.5 %
  slower causal at T 1024-2048, where the diagonal tile's masked half grows (session 18,
  calls 3 and 6). Interpreted on CPU every op runs persistent on a 2-CTA grid: the same
  kernel body, far fewer interpreted CTAs, and the cross-item path exercised."""
  d = max(head_dim, v_head_dim)
  dense = op == "attention"
  block_kv = 64 if d > 128 else 128
  if dense and d <= 64 and (band is None or _visible_keys(kv_len, band) > 2048):
    block_kv = 256
  return Config(block_kv=block_kv, num_stages=3 if d <= 64 else 2,
                persistent=bool(interpret) or dense, heavy_first=not dense)


def _visible_keys(kv_len: Optional[int], band) -> float:
  """Most keys a row of a banded variant can see: kv_len or the band's width (inf when
  neither is known)."""
  left, right = band
  n = math.inf if kv_len is None else kv_len
  return n if left is None else min(n, left + (right or 0) + 1)


SMEM_LIMIT = 232448   # bytes of shared memory one CTA may use on Hopper (227 KiB)


def smem_bytes(cfg: Config, d: int, dv: int, q_bufs: int, kv_halves: int = 1) -> int:
  """Shared memory of the forward kernel's scratch (bf16/fp16; see `run_forward`), with
  1 KiB for barriers and alignment (Mosaic GPU counts 632 bytes over the buffers in the
  sparse ring; `compiler_params` reserves no cross-warp reduction scratch). kv_halves = 2:
  the block-sparse ring (a tile per consumer in every slot)."""
  bq, st = cfg.block_q, cfg.num_stages
  return 2 * (q_bufs * 2 * bq * d + (2 * bq * dv if dv != d else 0)
              + st * kv_halves * cfg.block_kv * (d + dv)) + 4 * 2 * bq + 1024


def q_buffers(cfg: Config, d: int, dv: int, kv_halves: int = 1) -> int:
  """Q buffers of a CTA: a persistent one takes two when they fit (the next item's Q loads
  while the current item finishes), else one (the next Q loads once O is stored from it)."""
  if cfg.persistent and smem_bytes(cfg, d, dv, 2, kv_halves) <= SMEM_LIMIT:
    return 2
  return 1


def page_fits(page_size: int, block_kv: int) -> bool:
  """Whole pages TMA-load into block_kv-row tiles (or a tile is cut from one page)."""
  return page_size % 8 == 0 and (block_kv % page_size == 0 or page_size % block_kv == 0)


def pick_config(op: str, q, k, v, *, batch: int, q_len: int, kv_len: int, variant: Variant,
                interpret: Any, page_size: Optional[int] = None) -> Config:
  """The config tuned on this GPU for the call's shape bucket (`jattn.tuned`; k/v may
  be pages), else `default_config`. A tuned tile that cannot read the pages is skipped."""
  default = default_config(q.shape[-1], v.shape[-1], interpret, op, kv_len=kv_len,
                           band=variant.band if variant is not None else None)
  found = tuned.lookup(tuned.bucket(
      op, dtype=q.dtype, kv_dtype=k.dtype, head_dim=q.shape[-1], v_head_dim=v.shape[-1],
      num_q_heads=q.shape[-2], num_kv_heads=k.shape[-2], batch=batch, q_len=q_len,
      kv_len=kv_len, page_size=page_size, variant=variant), dataclasses.asdict(default))
  if found is not None:   # (the tuner sets the fields it searched; the rest are the default's)
    cfg = dataclasses.replace(default, **found)
    if page_size is None or page_fits(page_size, cfg.block_kv):
      return cfg
  return default


# ----------------------------------------------------------------------------- capability

def operand_reason(spec, max_head_dim: int = 256) -> Optional[str]:
  """Why these kernels cannot take the call's dtypes, head dims or variant, or None."""
  if not any(jnp.dtype(spec.dtype) == jnp.dtype(d) for d in DTYPES):
    return f"dtype {jnp.dtype(spec.dtype).name} (needs bfloat16 or float16)"
  if jnp.dtype(spec.kv_dtype) != jnp.dtype(spec.dtype):
    return f"kv dtype {jnp.dtype(spec.kv_dtype).name} differs from q dtype"
  for name, d in (("head_dim", spec.head_dim), ("v_head_dim", spec.v_head_dim)):
    if d % 16 or not 16 <= d <= max_head_dim:
      return f"{name} {d} (needs a multiple of 16 in [16, {max_head_dim}])"
  return kernel_trace_reason(spec.variant, spec.head_dim)


def supports(spec) -> Optional[str]:
  """None if this kernel can serve `spec`, else the reason it cannot."""
  if spec.op not in ("attention", "prefill", "prefill_ragged"):
    return f"no Pallas prefill kernel for op {spec.op!r}"
  why = operand_reason(spec)
  if why is not None:
    return why
  if spec.op == "prefill":
    ps = spec.page_size
    bkv = default_config(spec.head_dim, spec.v_head_dim, op="prefill").block_kv
    if not page_fits(ps, bkv):
      return (f"page_size {ps}: the kernel TMA-loads whole pages into {bkv}-row K/V tiles, "
              f"so the page size must be a multiple of 8 that divides {bkv} or a multiple "
              f"of {bkv}")
    if spec.variant is not None and spec.variant.key_transform is not None:
      return "key_transform on a paged cache (apply it before append_kv)"
  return None


# ----------------------------------------------------------------------------- helpers

def interpret_params(interpret: Any):
  """Map the dispatcher's `interpret` flag to what `plgpu.kernel` takes."""
  if interpret is True:
    return plgpu.InterpretGPUParams()
  return interpret or False


def _tiled_smem(shape, dtype):
  """SMEM buffer in the swizzled layout wgmma and TMA want: rows x (swizzle bytes) tiles,
  the widest swizzle (128, 64 or 32 bytes) that divides a row."""
  row_bytes = shape[-1] * jnp.dtype(dtype).itemsize
  swizzle = next(s for s in (128, 64, 32) if row_bytes % s == 0)
  tile = swizzle // jnp.dtype(dtype).itemsize
  return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, tile)),
                                              plgpu.SwizzleTransform(swizzle)))


# Hardware named barriers 0 and 1 + warpgroup index belong to Mosaic GPU; ours follow:
# four for the turn, then one per ring slot for K and for V (16 in all on the SM).
NAMED_BARRIER_BASE = 4
MAX_NAMED_STAGES = (16 - NAMED_BARRIER_BASE - 4) // 2


def named_barrier(op: str, index, threads: int):
  """PTX `bar.<op> index, threads` (op "sync" or "arrive"; index an int32 scalar, traced
  or not). Counted per thread, executed once per warp: a warpgroup's arrival is four
  warp instructions, where an mbarrier arrival from Pallas is 128 thread arrivals."""
  @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WG_SPLAT,))
  def emit(_, i):
    mgpu.utils.inline_ptx(f"bar.{op} $0, {threads};", i.registers[()],
                          has_side_effects=True, convergent=True)
  emit(jnp.asarray(index, jnp.int32))


def after_turn(x, smem_ref):
  """x + 0, where the 0 comes from a volatile shared-memory load, which ptxas cannot
  move above the turn's `bar.sync` (a barrier orders shared-memory accesses; it does
  not order register arithmetic, and ptxas hoists half the exponentials above it).
  Whatever depends on the result starts after the turn. `smem_ref`: any SMEM ref."""
  @plgpu.inline_mgpu(arg_types=(_ROW, plgpu.RefType()),
                     return_type=plgpu.ShapeDtypeStruct(x.shape, x.dtype, layout=_ROW))
  def emit(_, v, ref):
    # a u32 as f32 is >= +0, so min(., +0) is +0 whatever the word holds
    zero = mgpu.utils.inline_ptx(
        "{ .reg .u32 w; ld.volatile.shared.u32 w, [$1]; cvt.rn.f32.u32 $0, w; "
        "min.f32 $0, $0, 0f00000000; }", mgpu.utils.memref_ptr(ref),
        result_types=v.mlir_dtype, has_side_effects=True)
    return v + mgpu.FragmentedArray.splat(zero, v.shape, layout=v.layout)
  return emit(x, smem_ref)


RESCALE_SLACK = 8.0    # log2 units a row's running max may lag its true max (p <= 2^8)


def rescale_where_grown(acc, alpha, grown):
  """acc * alpha row-wise, computed only in the warps where some row's running max moved
  (`grown`, int32 per row, nonzero where it did): elsewhere alpha is 1 on every row of
  the warp, and the Dv/2 multiplies a thread are skipped by one vote and a branch that
  is uniform over the warp (FlashAttention-4's lazy rescaling, on Hopper)."""
  @plgpu.inline_mgpu(arg_types=(_WGMMA, _ROW, _ROW),
                     return_type=plgpu.ShapeDtypeStruct(acc.shape, acc.dtype, layout=_WGMMA))
  def emit(_, acc, alpha, grown):
    i32 = ir.IntegerType.get_signless(32)
    flag = None
    for reg in grown.registers.flat:
      elems = ([vector.extract(reg, [], [i]) for i in range(ir.VectorType(reg.type).shape[0])]
               if isinstance(reg.type, ir.VectorType) else [reg])
      for e in elems:
        flag = e if flag is None else arith.ori(flag, e)
    warp_grew = mgpu.utils.inline_ptx(
        "{ .reg .pred p, q; setp.ne.u32 p, $1, 0; vote.sync.any.pred q, p, -1; "
        "selp.u32 $0, 1, 0, q; }", flag, result_types=i32, convergent=True)
    cond = arith.cmpi(arith.CmpIPredicate.ne, warp_grew, arith.constant(i32, 0))
    regs = list(acc.registers.flat)
    branch = scf.IfOp(cond, [r.type for r in regs], has_else=True)
    with ir.InsertionPoint(branch.then_block):
      scaled = acc * alpha.broadcast_in_dim(acc.shape, (0,), acc.layout)
      scf.yield_(list(scaled.registers.flat))
    with ir.InsertionPoint(branch.else_block):
      scf.yield_(regs)
    out = np.empty(acc.registers.shape, dtype=object)
    out.flat[:] = list(branch.results)
    return mgpu.FragmentedArray(_registers=out, _layout=acc.layout, _is_signed=None)
  return emit(acc, alpha, grown)


class Signals:
  """The consumers' ping-pong turn and the ring's "slot free" signals of the forward
  kernel, through mbarriers (interpreted kernels: the GPU interpreter runs no inline PTX)
  or hardware named barriers (compiled). Both give the same order of events. Measured
  on an H200 (benchmarks/NOTES.md, session 19): dense rows within noise, the block-sparse
  kernel 1-6 % shorter by the device clock.

  * The turn: consumer wg arrives where it is ready (`turn_arrive`) and waits where it
    needs the other to have arrived (`turn_wait`); the two alternate, so the n-th wait
    of each waits for the other's n-th arrival. mbarrier: one of two arrivals. Named:
    wg arrives on the other's barrier and syncs on its own, one barrier per (consumer,
    parity of n): the other may arrive again before wg's sync (its arrive does not
    block) but not twice, since its next arrival follows its own sync, which needs wg's
    next arrival, which follows wg's sync. `parity` is n mod 2 (see the kernel).
  * release(kind, slot) (consumers, after reading the slot) / acquire(kind, slot)
    (producer, before refilling it), kind "k" or "v": an mbarrier of two arrivals, or a
    named barrier per slot over all three warpgroups (consumers arrive, producer syncs).
    A consumer arrives on a slot's barrier once per tile, and the next tile in that slot
    cannot load before the producer's sync, so arrivals never run a phase ahead."""

  def __init__(self, named: bool, stages: int, sched=None, k_free=None, v_free=None):
    self.named, self.stages = named, stages
    self.sched, self.free = sched, {"k": k_free, "v": v_free}

  @staticmethod
  def parities(k, wg):
    """(parity of the rendezvous, parity of a step's first turn) of consumer wg in item
    k; a step's second turn has the other. An item takes two turns per step and one
    rendezvous (wg 1's first, wg 0's last), so item k starts at parity k mod 2."""
    item = k % 2
    return item, (item + wg) % 2

  def turn_arrive(self, wg, parity):
    if self.named:
      named_barrier("arrive", NAMED_BARRIER_BASE + 2 * (1 - wg) + parity, 256)
    else:
      plgpu.barrier_arrive(self.sched)

  def turn_wait(self, wg, parity):
    if self.named:
      named_barrier("sync", NAMED_BARRIER_BASE + 2 * wg + parity, 256)
    else:
      plgpu.barrier_wait(self.sched)

  def _slot_barrier(self, kind, slot):
    return NAMED_BARRIER_BASE + 4 + (0 if kind == "k" else self.stages) + slot

  def release(self, kind, slot):
    if self.named:
      named_barrier("arrive", self._slot_barrier(kind, slot), 384)
    else:
      plgpu.barrier_arrive(self.free[kind].at[slot])

  def acquire(self, kind, slot):
    if self.named:
      named_barrier("sync", self._slot_barrier(kind, slot), 384)
    else:
      plgpu.barrier_wait(self.free[kind].at[slot])


def mma_acc(acc, a, b_ref, interpret: bool, then=None):
  """acc + a @ b_ref[...] with `a` a register array (wgmma), running `then()` while the
  matmul is in flight. The GPU interpreter has no rule for register operands or
  `run_state`, so there the product is a plain dot on the SMEM contents."""
  if interpret:
    out = acc + jnp.dot(a, b_ref[...], preferred_element_type=jnp.float32)
    if then is not None:
      then()
    return out

  def fn(acc_ref):
    plgpu.wgmma(acc_ref, a, b_ref)
    if then is not None:
      then()

  return pl.run_state(fn)(plgpu.ACC.init(acc))


def mma_acc_then_qk(acc, a, b_ref, q_ref, kt_ref, s_shape, interpret, between, after):
  """(acc + a @ b_ref, q_ref @ kt_ref): the second product issued right behind the first
  (`between()` before it, `after()` once both are issued) and one wait for both, so the
  tensor cores run them back to back. Interpreted: `mma_acc`, then the second product."""
  def qk(s_ref):
    plgpu.wgmma(s_ref, q_ref, kt_ref)
    after()

  if interpret:
    def qk_read(s_ref):
      qk(s_ref)
      return s_ref[...]

    acc = mma_acc(acc, a, b_ref, True, then=between)
    return acc, pl.run_scoped(qk_read, plgpu.ACC(s_shape, jnp.float32))

  def fn(refs):
    o_ref, s_ref = refs
    plgpu.wgmma(o_ref, a, b_ref)
    between()
    qk(s_ref)

  zeros = plgpu.layout_cast(jnp.zeros(s_shape, jnp.float32), _WGMMA)
  return pl.run_state(fn)((plgpu.ACC.init(acc), plgpu.ACC.init(zeros)))


def online_softmax(s, m_i, l_i):
  """One online-softmax step over base-2 logits s [rows, keys] (masked entries -inf):
  (m_new, alpha, p, l_new) with alpha = 2^(m_i - m_new) the rescale of what came before.
  Rows with nothing visible yet keep m = -inf and get p = 0."""
  m_new = jnp.maximum(m_i, s.max(axis=1))
  m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  alpha = jnp.exp2(m_i - m_use)
  p = jnp.exp2(s - lax.broadcast_in_dim(m_use, s.shape, [0]))
  return m_new, alpha, p, l_i * alpha + p.sum(axis=1)


def _cdiv(a, b):
  return lax.div(a + (b - 1), b)


def band_tiles(variant: Variant, kv_len, pos_first, pos_last, block_kv):
  """KV tile range [lo, hi) that rows with positions pos_first..pos_last may see."""
  left, right = variant.band if variant.band is not None else (None, None)
  kv_lo = 0 if left is None else jnp.maximum(pos_first - left, 0)
  kv_hi = kv_len if right is None else jnp.minimum(kv_len, pos_last + right + 1)
  lo = lax.div(kv_lo, block_kv)
  hi = jnp.maximum(_cdiv(jnp.maximum(kv_hi, 0), block_kv), lo)
  return lo, hi


def full_tiles(variant: Variant, kv_len, pos_first, pos_last, block_kv, lo, hi):
  """Sub-range [a, b) of [lo, hi) whose tiles every row sees whole (no mask needed)."""
  if variant.has_custom_mask:
    return hi, hi
  left, right = variant.band if variant.band is not None else (None, None)
  a = lo
  if left is not None:
    a = jnp.maximum(a, _cdiv(jnp.maximum(pos_last - left, 0), block_kv))
  a = jnp.minimum(a, hi)
  b = lax.div(jnp.maximum(kv_len, 0), block_kv)
  if right is not None:
    b = jnp.minimum(b, lax.div(jnp.maximum(pos_first + right + 1, 0), block_kv))
  b = jnp.clip(b, a, hi)
  return a, b


def token_transforms(q, k, variant: Variant, q_lengths, kv_lengths):
  """Apply query_transform / key_transform per token (XLA pre-pass), in float32."""
  if variant.query_transform is None and variant.key_transform is None:
    return q, k
  B, T, Nq, _ = q.shape
  S, Nkv = k.shape[1], k.shape[2]
  q_len = jnp.full((B,), T, jnp.int32) if q_lengths is None else jnp.clip(q_lengths, 0, T)
  kv_len = jnp.full((B,), S, jnp.int32) if kv_lengths is None else jnp.clip(kv_lengths, 0, S)
  batch = jnp.arange(B, dtype=jnp.int32)[:, None, None, None]
  if variant.query_transform is not None:
    q_pos = (kv_len - q_len)[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
    ctx = Context(q_pos=q_pos[:, :, None, None], kv_pos=None,
                  head=jnp.arange(Nq, dtype=jnp.int32)[None, None, :, None], batch=batch,
                  params={n: jnp.reshape(p, (1, 1, Nq, 1)) for n, p in variant.params.items()})
    q = variant.query_transform(q.astype(jnp.float32), ctx).astype(q.dtype)
  if variant.key_transform is not None:
    kv_pos = jnp.arange(S, dtype=jnp.int32)[None, :, None, None]
    ctx = Context(q_pos=None, kv_pos=jnp.broadcast_to(kv_pos, (B, S, 1, 1)),
                  head=jnp.arange(Nkv, dtype=jnp.int32)[None, None, :, None], batch=batch,
                  params={})
    k = variant.key_transform(k.astype(jnp.float32), ctx).astype(k.dtype)
  return q, k


# ----------------------------------------------------------------------------- geometry

class Refs:
  """The kernel's GMEM refs: q, k, v (or K/V pages), extra int32 tables, o, lse."""

  def __init__(self, q, k, v, extra, o, lse):
    self.q, self.k, self.v, self.extra, self.o, self.lse = q, k, v, extra, o, lse


class Dense:
  """q [B,Tp,Nq,D], k/v [B,Sp,Nkv,*]; o [B,Tp,Nq,Dv], lse [B,Nq,Tp]. Work item w covers
  rows [2 bq qt, 2 bq (qt + 1)) of head h of sequence b, q tiles fastest (heaviest first)
  so that items running at the same time share K/V tiles through L2. extra: optional
  lens int32 [2, B] (q_len, kv_len); without it the lengths are compile-time constants."""

  kv_copies = 1
  sparse = False   # True: per-(head, q tile) kv-tile lists (jattn.pallas.block_sparse)

  def __init__(self, B, Nq, num_q_tiles, T, S, has_lens, heavy_first):
    self.B, self.Nq, self.nqt, self.T, self.S = B, Nq, num_q_tiles, T, S
    self.has_lens, self.heavy_first = has_lens, heavy_first
    self.num_items = B * Nq * num_q_tiles
    self.num_extra = 1 if has_lens else 0

  def item(self, refs, w):
    """-> (b, h, qt, q_len, kv_len) of work item w."""
    bh, qt = lax.div(w, self.nqt), lax.rem(w, self.nqt)
    if self.heavy_first:
      qt = self.nqt - 1 - qt
    b, h = lax.div(bh, self.Nq), lax.rem(bh, self.Nq)
    if not self.has_lens:
      return b, h, qt, self.T, self.S
    lens = refs.extra[0]            # (variant params follow it)
    return b, h, qt, lens[0, b], lens[1, b]

  def q_rows(self, refs, w, b, h, t0, n):
    return refs.q.at[b, pl.ds(t0, n), h]

  def o_rows(self, refs, w, b, h, t0, n):
    return refs.o.at[b, pl.ds(t0, n), h]

  def lse_rows(self, refs, w, b, h, t0, n):
    return refs.lse.at[b, h, pl.ds(t0, n)]

  def kv_base(self, refs, b, h, r0):
    return None

  def kv_index(self, refs, base, j):
    return j

  def load_kv(self, refs, b, base, kvh, j, bkv, src, dst, bar):
    """Tile j of src (refs.k or refs.v) into its ring slot dst, arriving on bar."""
    plgpu.copy_gmem_to_smem(src.at[b, pl.ds(j * bkv, bkv), kvh], dst, bar)


class Packed:
  """Packed sequences, as slot-major tiles: work items are (head, tile slot); slot t is
  q tile tiles[1, t] of sequence tiles[0, t] (or nothing when tiles[2, t] == 0), its rows
  are q [t * 2 bq : (t + 1) * 2 bq] (the caller gathers the packed queries into slots: TMA
  tiles must start on 8-row boundaries) and its outputs o [t, :, h], lse [h, t, :] (the
  caller gathers them back to packed rows). Sequence b has q_len seq[0, b], kv_len
  seq[1, b], and its K/V either contiguous from row seq[2, b] (a multiple of block_kv) of
  k [rows, Nkv, D], or in pages k [P, page_size, Nkv, D] through page_table [B, pages]."""

  sparse = False

  def __init__(self, Nq, n_slots, rows, paged, page_size=None, num_pages=None, bkv=None):
    self.Nq, self.n_slots, self.rows, self.paged = Nq, n_slots, rows, paged
    self.num_items = Nq * n_slots
    self.num_extra = 3 if paged else 2
    self.page_size, self.num_pages, self.bkv = page_size, num_pages, bkv
    self.kv_copies = max(bkv // page_size, 1) if paged else 1

  def item(self, refs, w):
    tiles, seq = refs.extra[0], refs.extra[1]
    h, t = lax.div(w, self.n_slots), lax.rem(w, self.n_slots)
    b, qt = tiles[0, t], tiles[1, t]
    q_len = jnp.where(tiles[2, t] > 0, seq[0, b], 0)
    return b, h, qt, q_len, seq[1, b]

  def q_rows(self, refs, w, b, h, t0, n):
    t = lax.rem(w, self.n_slots)
    return refs.q.at[pl.ds(pl.multiple_of(t * self.rows + lax.rem(t0, self.rows), 8), n), h]

  def o_rows(self, refs, w, b, h, t0, n):
    t = lax.rem(w, self.n_slots)
    return refs.o.at[t, pl.ds(pl.multiple_of(lax.rem(t0, self.rows), 8), n), h]

  def lse_rows(self, refs, w, b, h, t0, n):
    t = lax.rem(w, self.n_slots)
    return refs.lse.at[h, t, pl.ds(pl.multiple_of(lax.rem(t0, self.rows), 8), n)]

  def kv_base(self, refs, b, h, r0):
    """Per-item K/V addressing, read once per item (not once per tile)."""
    return b if self.paged else refs.extra[1][2, b]

  def kv_index(self, refs, base, j):
    """Tile j's source: j (contiguous K/V), else the ids of the pages it spans (or of the
    one page it is cut from). The producer reads them before it waits for a free slot,
    so the page-table loads overlap the wait instead of following it."""
    if not self.paged:
      return j
    table, b = refs.extra[2], base
    ps, last, bkv = self.page_size, table.shape[1] - 1, self.bkv
    page = lambda i: jnp.clip(table[b, jnp.minimum(i, last)], 0, self.num_pages - 1)
    if ps >= bkv:   # one page holds the whole tile
      return j, (page(lax.div(j * bkv, ps)),)
    n = bkv // ps
    return j, tuple(page(j * n + u) for u in range(n))

  def load_kv(self, refs, b, base, kvh, j, bkv, src, dst, bar):
    if not self.paged:
      rows = pl.ds(pl.multiple_of(base + j * bkv, 8), bkv)
      plgpu.copy_gmem_to_smem(src.at[rows, kvh], dst, bar)
      return
    j, pages = j
    ps = self.page_size
    if ps >= bkv:
      rows = pl.ds(pl.multiple_of(lax.rem(j * bkv, ps), 8), bkv)
      plgpu.copy_gmem_to_smem(src.at[pages[0], rows, kvh], dst, bar)
      return
    for u, page in enumerate(pages):
      plgpu.copy_gmem_to_smem(src.at[page, :, kvh], dst.at[pl.ds(u * ps, ps)], bar)


# ----------------------------------------------------------------------------- kernel

def _fwd_kernel_body(refs: Refs, scratch, *, geo, cfg: Config, variant: Variant,
                     sm_scale: float, group: int, num_ctas: int, param_names, interpret: bool):
  """A CTA runs its share of the work items (one item when not persistent; else items
  k * num_ctas + c, c snaking back and forth so that heavy and light items mix); an item
  is 2 * block_q query rows of one head. K/V slots and barrier phases run on across items,
  so the producer prefetches the next item's Q and K/V while the consumers finish.

  With `geo.sparse` (compile-time) the KV tiles come from per-(head, q tile) lists instead
  of the band's [lo, hi): each consumer warpgroup owns one block_q-row q tile with its own
  list, step g loads consumer c's g-th tile into half c of the ring slot, and both run
  max(n_0, n_1) steps (a consumer past its list runs the barrier protocol without math,
  so the ping-pong stays in step)."""
  bq, bkv, stages = cfg.block_q, cfg.block_kv, cfg.num_stages
  # decided in run_forward (`resolve`)
  early_qk, lazy, pin = cfg.early_qk, cfg.lazy_rescale, cfg.pin_softmax and not interpret
  (q_smem, o_smem, lse_smem, k_smem, v_smem, q_bar, q_free, k_bar, v_bar, k_free, v_free,
   sched) = scratch
  sig = Signals(sched is None, stages, sched, k_free, v_free)   # named: no mbarriers made
  q_bufs = q_smem.shape[0]
  # When a consumer gives its Q buffer back: right after the KV loop when O has its own
  # buffer; else O is written through the Q buffer and the buffer is freed once the store
  # has read it: at the next item's start (two buffers, so the producer has loaded the
  # next Q meanwhile) or right after the store (one buffer).
  release = "loop" if o_smem is not None else ("next" if q_bufs == 2 else "store")
  dtype = refs.q.dtype
  cta = lax.axis_index("cta")
  wg = lax.axis_index("wg")
  full, rest = divmod(geo.num_items, num_ctas)
  last_round_has_me = jnp.where(full % 2 == 0, cta < rest, cta >= num_ctas - rest)
  n_items = full + jnp.where(last_round_has_me, 1, 0)

  def work(k, steps=None):
    """Item k of this CTA -> (w, b, h, q_len, kv_len, off, r0, lo, hi); `steps`: the
    sparse item's step count when already read."""
    w = k * num_ctas + jnp.where(lax.rem(k, 2) == 0, cta, num_ctas - 1 - cta)
    b, h, qt, q_len, kv_len = geo.item(refs, w)
    off = kv_len - q_len
    r0 = qt * (2 * bq)
    rows_end = jnp.minimum(r0 + 2 * bq, q_len)
    if geo.sparse:
      lo, hi = 0, geo.num_steps(refs, h, r0) if steps is None else steps
    else:
      lo, hi = band_tiles(variant, kv_len, off + r0, off + rows_end - 1, bkv)
    hi = jnp.where(rows_end > r0, hi, lo)            # no valid row: visit nothing
    return w, b, h, q_len, kv_len, off, r0, lo, hi

  def rendezvous(parity):
    sig.turn_arrive(wg, parity)
    sig.turn_wait(wg, parity)

  # Registers per thread, consumer / producer (of 512 across the three warpgroups). ptxas
  # spills at neither split; 240 / 24 ran head dim 64 3.8-5.6 % faster on an H100 and
  # head dim 256 and T 8192 ~2 % slower (benchmarks/NOTES.md, session 9), hence by width.
  regs = (240, 24) if max(q_smem.shape[-1], v_smem.shape[-1]) <= 64 else (232, 40)

  @pl.when(wg < 2)
  def _consumer():
    plgpu.set_max_registers(regs[0], action="increase")
    # Where the row sum goes relative to the barriers changes the schedule ptxas emits;
    # before them is faster for Dv <= 128 and after them for wider heads (as in JAX's
    # attention_mgpu and tokamax).
    sum_early = v_smem.shape[-1] <= 128

    def iota(d):
      return plgpu.broadcasted_iota(jnp.int32, (bq, bkv), d, layout=_WGMMA)

    def list_header(k):
      """Sparse: item k's (steps, own whole count, own count, shared count), global
      loads that `run_item` issues an item ahead (on an H200 1.5-2 % faster at density
      0.3 and 0.5, neutral at 0.1: benchmarks/NOTES.md, session 21, call 8)."""
      _, _, h, _, _, _, r0, _, hi = work(k)
      return (hi, *geo.segment(refs, h, r0, wg), geo.shared(refs, h, r0))

    def run_item(k, carry):
      base, header = carry if geo.sparse else (carry, None)
      w, b, h, q_len, kv_len, off, r0, lo, hi = work(
          k, None if header is None else header[0])
      if geo.sparse:   # the next item's header, read while this one runs
        header_next = list_header(jnp.minimum(k + 1, n_items - 1))
      buf = lax.rem(k, q_bufs)
      w0 = r0 + wg * bq
      qs = q_smem.at[buf, wg]
      item_parity, turn_parity = Signals.parities(k, wg)
      params = {n: r[h] for n, r in zip(param_names, refs.extra[geo.num_extra:])}
      if geo.sparse:   # own list: [0, nf) whole tiles, [nf, n) masked, [n, hi) idle
        nf, n, ns = header[1:]   # [0, ns): both consumers' tile, in half 0
        segments = ((lo, nf, False), (nf, n, True))
        kv_at = lambda slot, j, ref: ref.at[slot, jnp.where(j < ns, 0, wg)]
        kv_start = lambda j: geo.kv_tile(refs, h, r0, wg, j) * bkv
      else:
        w_last = jnp.maximum(jnp.minimum(w0 + bq, q_len) - 1, w0)
        a, bb = full_tiles(variant, kv_len, off + w0, off + w_last, bkv, lo, hi)
        segments = ((lo, a, True), (a, bb, False), (bb, hi, True))
        kv_at = lambda slot, j, ref: ref.at[slot]
        kv_start = lambda j: j * bkv

      def slot_of(j):
        return lax.rem(base + j - lo, stages)

      def logits(s, j, masked):
        """Raw q.k tile -> (t, c): base-2 logits are t * c; masked entries are -inf.
        Without a logits_transform the scale stays unapplied, so that exp2(t * c - m)
        is one fused multiply-add per element."""
        ctx = None
        if variant.logits_transform is not None or masked:
          ctx = Context(q_pos=off + w0 + iota(0), kv_pos=kv_start(j) + iota(1), head=h,
                        batch=b, params=params)
        c = sm_scale * LOG2E
        if variant.logits_transform is not None:
          s, c = variant.logits_transform(s * sm_scale, ctx) * LOG2E, None
        if masked:
          keep = ctx.kv_pos < kv_len
          if variant.logits_mask is not None:
            keep = jnp.logical_and(keep, variant.logits_mask(ctx))
          s = jnp.where(keep, s, -jnp.inf)
        return s, c

      def wait_next_k(j):
        @pl.when(j + 1 < hi)
        def _():
          plgpu.barrier_wait(k_bar.at[slot_of(j + 1)])

      def k_tile(j):
        return kv_at(slot_of(j), j, k_smem).T

      def scores(j):
        """Step j's S = Q K_j^T, issued (the turn handed over) and waited; with
        early_qk only the item's first step runs this, before the loop."""
        def qk(acc_ref):
          plgpu.wgmma(acc_ref, qs, k_tile(j))
          sig.turn_arrive(wg, turn_parity)
          return acc_ref[...]

        s = pl.run_scoped(qk, plgpu.ACC((bq, bkv), jnp.float32))
        sig.release("k", slot_of(j))
        return s

      def step(j, carry, masked, issue_next=False):
        """Softmax of S_j and O += P_j V_j. With early_qk S_j comes in the carry, and
        with issue_next S_{j+1} = Q K_{j+1}^T is issued right behind P_j V_j."""
        acc, m_i, l_i = carry[:3]
        slot = slot_of(j)
        s = carry[3] if early_qk else scores(j)
        sig.turn_wait(wg, turn_parity)

        t, c = logits(s, j, masked)
        row_max = t.max(axis=1)
        m_new = jnp.maximum(m_i, row_max if c is None else row_max * c)
        if lazy:   # keep the old max unless the row's grew by more than the slack
          grown = m_new > m_i + RESCALE_SLACK
          m_new = jnp.where(grown, m_new, m_i)
        m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)   # rows with nothing visible yet
        if pin:
          m_use = after_turn(m_use, lse_smem)
        alpha = jnp.exp2(m_i - m_use)
        m_b = lax.broadcast_in_dim(m_use, t.shape, [0])
        p = jnp.exp2(t - m_b if c is None else t * c - m_b)
        if lazy and not interpret:   # interpreted: the plain multiply, the same values
          acc = rescale_where_grown(acc, alpha, grown.astype(jnp.int32))
        else:
          acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
        l_i = l_i * alpha
        p16 = p.astype(dtype)
        if sum_early:
          l_i = l_i + p.sum(axis=1)
          acc, l_i, m_new, p16 = lax.optimization_barrier((acc, l_i, m_new, p16))

        sig.turn_arrive(wg, 1 - turn_parity)
        plgpu.barrier_wait(v_bar.at[slot])
        sig.turn_wait(wg, 1 - turn_parity)
        if not sum_early:
          l_i = l_i + p.sum(axis=1)
        if issue_next:
          acc, s = mma_acc_then_qk(
              acc, p16, kv_at(slot, j, v_smem), qs, k_tile(j + 1), (bq, bkv), interpret,
              between=lambda: plgpu.barrier_wait(k_bar.at[slot_of(j + 1)]),
              after=lambda: sig.turn_arrive(wg, turn_parity))
          sig.release("v", slot)
          sig.release("k", slot_of(j + 1))
        else:
          acc = mma_acc(acc, p16, kv_at(slot, j, v_smem), interpret,
                        then=functools.partial(wait_next_k, j))
          sig.release("v", slot)
        return (acc, m_new, l_i, s) if early_qk else (acc, m_new, l_i)

      def idle_step(j, carry):
        """`step`'s barrier protocol without the math (sparse: past this list's end)."""
        slot = slot_of(j)
        sig.turn_arrive(wg, turn_parity)
        sig.release("k", slot)
        sig.turn_wait(wg, turn_parity)
        sig.turn_arrive(wg, 1 - turn_parity)
        plgpu.barrier_wait(v_bar.at[slot])
        sig.turn_wait(wg, 1 - turn_parity)
        wait_next_k(j)
        sig.release("v", slot)
        return carry

      acc = plgpu.layout_cast(jnp.zeros((bq, v_smem.shape[-1]), jnp.float32), _WGMMA)
      m_i = plgpu.layout_cast(jnp.full((bq,), -jnp.inf, jnp.float32), _ROW)
      l_i = plgpu.layout_cast(jnp.zeros((bq,), jnp.float32), _ROW)
      # Named regions: events of Mosaic GPU's profiler when a trace is asked for
      # (`JATTN_MOSAIC_PROFILE`, `benchmarks/kernel_trace.py`); no code otherwise.
      with jax.named_scope("item_start"):
        plgpu.barrier_wait(q_bar.at[buf])
        if release == "next":
          @pl.when(k > 0)
          def _():   # the last item's O (in its Q buffer) has been read out: free the buffer
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            plgpu.barrier_arrive(q_free.at[lax.rem(k - 1, q_bufs)])

        @pl.when(hi > lo)
        def _():
          plgpu.barrier_wait(k_bar.at[slot_of(lo)])

        pl.when(wg == 1)(functools.partial(rendezvous, item_parity))
      with jax.named_scope("steps"):
        carry = (acc, m_i, l_i)
        if early_qk:
          # Step lo's S before the loop (none in an empty item); the steps before the
          # last issue the next S; the last (masked: any tile) issues none. Dense and
          # packed geometries only (`run_forward` refuses it on the sparse one).
          s0 = plgpu.layout_cast(jnp.zeros((bq, bkv), jnp.float32), _WGMMA)
          carry = lax.fori_loop(lo, jnp.minimum(lo + 1, hi),
                                lambda j, c: (*c[:3], scores(j)), (*carry, s0))
          for start, stop, masked in segments:
            carry = lax.fori_loop(start, jnp.minimum(stop, hi - 1),
                                  functools.partial(step, masked=masked, issue_next=True),
                                  carry)
          carry = lax.fori_loop(jnp.maximum(lo, hi - 1), hi,
                                functools.partial(step, masked=True), carry)
        else:
          for start, stop, masked in segments:
            carry = lax.fori_loop(start, stop, functools.partial(step, masked=masked), carry)
        if geo.sparse:
          carry = lax.fori_loop(n, hi, idle_step, carry)
      acc, m_i, l_i = carry[:3]
      with jax.named_scope("item_end"):
        pl.when(wg == 0)(functools.partial(rendezvous, item_parity))
        if release == "loop":   # Q is no longer read: the producer may refill its buffer
          plgpu.barrier_arrive(q_free.at[buf])

        rows = w0 + plgpu.broadcasted_iota(jnp.int32, (bq,), 0, layout=_ROW)
        valid = jnp.logical_and(rows < q_len, l_i > 0)
        l_safe = jnp.where(valid, l_i, 1.0)
        inv = jnp.where(valid, 1.0 / l_safe, 0.0)
        lse = jnp.where(valid, m_i * LN2 + jnp.log(l_safe), -jnp.inf)
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)   # the last item's stores have read
        os = o_smem.at[wg] if o_smem is not None else qs
        os[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(dtype)
        lse_smem.at[wg][...] = lse
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(os, geo.o_rows(refs, w, b, h, w0, bq))
        plgpu.copy_smem_to_gmem(lse_smem.at[wg], geo.lse_rows(refs, w, b, h, w0, bq))
        if release == "store":   # O went out through the Q buffer: free it once read
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)
          plgpu.barrier_arrive(q_free.at[buf])
      return (base + (hi - lo), header_next) if geo.sparse else base + (hi - lo)

    first = (0, list_header(0)) if geo.sparse else 0   # item 0 exists: num_ctas <= items
    lax.fori_loop(0, n_items, run_item, first)
    plgpu.wait_smem_to_gmem(0)
    if release == "next":
      @pl.when(n_items > 0)
      def _():
        plgpu.barrier_arrive(q_free.at[lax.rem(n_items - 1, q_bufs)])

  @pl.when(wg == 2)
  def _producer():
    plgpu.set_max_registers(regs[1], action="decrease")

    def load_item(k, base):
      w, b, h, q_len, kv_len, off, r0, lo, hi = work(k)
      buf = lax.rem(k, q_bufs)

      @pl.when(k >= q_bufs)
      def _():
        plgpu.barrier_wait(q_free.at[buf])

      for c in range(2):
        plgpu.copy_gmem_to_smem(geo.q_rows(refs, w, b, h, r0 + c * bq, bq), q_smem.at[buf, c],
                                q_bar.at[buf])
      kvh = lax.div(h, group)
      kv_base = geo.kv_base(refs, b, h, r0)

      @pl.loop(lo, hi)
      def _(j):
        g = base + j - lo
        slot = lax.rem(g, stages)
        j = geo.kv_index(refs, kv_base, j)   # tile ids / page ids, read before the wait

        # K's slot frees once both consumers' Q.K^T has read it, V's after P.V: each
        # copy waits for its own slot only, so K's starts half a step sooner.
        for src, smem, kind, bar in ((refs.k, k_smem, "k", k_bar),
                                     (refs.v, v_smem, "v", v_bar)):
          @pl.when(g >= stages)
          def _():
            sig.acquire(kind, slot)

          geo.load_kv(refs, b, kv_base, kvh, j, bkv, src, smem.at[slot], bar.at[slot])

      return base + (hi - lo)

    total = lax.fori_loop(0, n_items, load_item, 0)

    # Observe the releases nobody waited for, so every barrier phase has a waiter.
    @pl.loop(jnp.maximum(total - stages, 0), total)
    def _(g):
      sig.acquire("k", lax.rem(g, stages))
      sig.acquire("v", lax.rem(g, stages))

    @pl.loop(jnp.maximum(n_items - q_bufs, 0), n_items)
    def _(k):
      plgpu.barrier_wait(q_free.at[lax.rem(k, q_bufs)])


PROFILE_RANGES = 128   # per warpgroup: 3 per item; 6 KiB of SMEM per CTA


def compiler_params(interpret) -> plgpu.CompilerParams:
  """approx_math, and no shared memory reserved for cross-warp reductions (Mosaic GPU's
  default keeps 2 KiB; the kernel's row reductions stay within a warp's lanes, and one
  that needed the scratch would fail to lower, not run wrong). With
  JATTN_MOSAIC_PROFILE=DIR (compiled only) also Mosaic GPU's profiler: each warpgroup's
  named regions (`item_start`, `steps`, `item_end`) are timed with the SM clock and a
  trace per call is written to DIR (`benchmarks/kernel_trace.py` reads it)."""
  params = dict(approx_math=True, reduction_scratch_bytes=0)
  trace_dir = os.environ.get("JATTN_MOSAIC_PROFILE")
  if trace_dir and not interpret:
    params.update(profile_space=PROFILE_RANGES, profile_dir=trace_dir,
                  profile_bounds_check=True)
  return plgpu.CompilerParams(**params)


def _pad_to(x, axis, multiple):
  n = x.shape[axis]
  pad = -n % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def _num_sms(interpret) -> int:
  if interpret:
    return 2   # a small "machine", so that interpreted CTAs run several items
  # Off-GPU (ahead-of-time lowering for CUDA) there is no device to ask: an H100's count.
  return getattr(jax.devices()[0], "core_count", None) or 132


def resolve(cfg: Config, dense_op: bool, head_dim: int, v_head_dim: int) -> Config:
  """cfg with its schedule fields decided where unset (see `Config`): `early_qk` for the
  dense op (`flash_forward`) at head dims > 128, `lazy_rescale` at Dv > 64,
  `pin_softmax` with 256-key tiles."""
  def unset(value, rule):
    return rule if value is None else value
  return dataclasses.replace(
      cfg, early_qk=unset(cfg.early_qk, dense_op and max(head_dim, v_head_dim) > 128),
      lazy_rescale=unset(cfg.lazy_rescale, v_head_dim > 64),
      pin_softmax=unset(cfg.pin_softmax, cfg.block_kv >= 256))


def run_forward(geo, q, k, v, extra, out_types, variant: Variant, *, sm_scale: float,
                cfg: Config, head_dim: int, v_head_dim: int, group: int, interpret: Any):
  """Launch the forward kernel on `geo`'s layout; returns (o, lse) in geo's layout."""
  names = tuple(sorted(variant.params))
  params = tuple(jnp.asarray(variant.params[n]) for n in names)
  D, Dv, dtype = head_dim, v_head_dim, q.dtype
  num_ctas = geo.num_items
  if cfg.persistent:
    num_ctas = max(min(num_ctas, _num_sms(interpret)), 1)
  q_bufs = q_buffers(cfg, D, Dv, 2 if geo.sparse else 1)
  separate_o = Dv != D
  named = not interpret   # the signals' barriers (`Signals`)
  cfg = resolve(cfg, isinstance(geo, Dense) and not geo.sparse, D, Dv)
  if geo.sparse and cfg.early_qk:
    raise ValueError("prefill Config: early_qk is not built for the block-sparse "
                     "geometry (its consumers' lists end at different steps)")
  if named and cfg.num_stages > MAX_NAMED_STAGES:
    raise ValueError(f"prefill Config: num_stages={cfg.num_stages}; the compiled kernel's "
                     f"ring takes at most {MAX_NAMED_STAGES} (a hardware barrier per slot)")

  def entry(q_ref, k_ref, v_ref, *rest):
    n_in = len(extra) + len(params)
    refs = Refs(q_ref, k_ref, v_ref, rest[:n_in], *rest[n_in:n_in + 2])
    st = cfg.num_stages
    kv_rows = (st, 2, cfg.block_kv) if geo.sparse else (st, cfg.block_kv)  # sparse: a half
    scratch = (                                                            # per consumer
        _tiled_smem((q_bufs, 2, cfg.block_q, D), dtype),
        _tiled_smem((2, cfg.block_q, Dv), dtype) if separate_o else None,
        plgpu.SMEM((2, cfg.block_q), jnp.float32),
        _tiled_smem((*kv_rows, D), dtype),
        _tiled_smem((*kv_rows, Dv), dtype),
        plgpu.Barrier(num_arrivals=2, num_barriers=q_bufs),          # Q loaded
        plgpu.Barrier(num_arrivals=2, num_barriers=q_bufs),          # Q buffer free
        plgpu.Barrier(num_arrivals=geo.kv_copies, num_barriers=st),  # K loaded
        plgpu.Barrier(num_arrivals=geo.kv_copies, num_barriers=st),  # V loaded
        None if named else plgpu.Barrier(num_arrivals=2, num_barriers=st),  # K slot free
        None if named else plgpu.Barrier(num_arrivals=2, num_barriers=st),  # V slot free
        None if named else plgpu.Barrier(num_arrivals=2),            # consumer ping-pong
    )
    body = functools.partial(_fwd_kernel_body, refs, geo=geo, cfg=cfg, variant=variant,
                             sm_scale=sm_scale, group=group, num_ctas=num_ctas,
                             param_names=names, interpret=bool(interpret))
    pl.run_scoped(lambda *s: body(s), *scratch, collective_axes="wg")

  return plgpu.kernel(
      entry,
      out_type=out_types,
      grid=(num_ctas,),
      grid_names=("cta",),
      num_threads=3,
      thread_name="wg",
      compiler_params=compiler_params(interpret),
      interpret=interpret_params(interpret),
  )(q, k, v, *extra, *params)


def flash_forward(q, k, v, lens, variant: Variant, *, sm_scale: float,
                  config: Optional[Config] = None, interpret: Any = False):
  """The kernel on dense inputs. lens int32 [2, B] = (q_len, kv_len), already clipped, or
  None for full lengths (then they are compile-time constants).
  Returns o [B,T,Nq,Dv] and lse [B,Nq,T] (head-major, as the kernel writes it)."""
  B, T, Nq, D = q.shape
  _, S, Nkv, Dv = v.shape
  cfg = config or default_config(D, Dv, interpret)
  rows = 2 * cfg.block_q
  qp = _pad_to(q, 1, rows)
  kp, vp = _pad_to(k, 1, cfg.block_kv), _pad_to(v, 1, cfg.block_kv)
  Tp = qp.shape[1]
  geo = Dense(B, Nq, Tp // rows, T, S, lens is not None, cfg.heavy_first)
  out_types = (jax.ShapeDtypeStruct((B, Tp, Nq, Dv), q.dtype),
               jax.ShapeDtypeStruct((B, Nq, Tp), jnp.float32))
  o, lse = run_forward(geo, qp, kp, vp, [] if lens is None else [lens], out_types, variant,
                       sm_scale=sm_scale, cfg=cfg, head_dim=D, v_head_dim=Dv,
                       group=Nq // Nkv, interpret=interpret)
  return o[:, :T], lse[:, :, :T]


# ----------------------------------------------------------------------------- dense op

def _lens(B, T, S, q_lengths, kv_lengths):
  if q_lengths is None and kv_lengths is None:
    return None
  q_len = jnp.full((B,), T, jnp.int32) if q_lengths is None else jnp.clip(q_lengths, 0, T)
  kv_len = jnp.full((B,), S, jnp.int32) if kv_lengths is None else jnp.clip(kv_lengths, 0, S)
  return jnp.stack([q_len.astype(jnp.int32), kv_len.astype(jnp.int32)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention_core(q, k, v, lens, variant, sm_scale, config, interpret):
  o, lse = flash_forward(q, k, v, lens, variant, sm_scale=sm_scale, config=config,
                         interpret=interpret)
  return o, jnp.swapaxes(lse, 1, 2)


def _attention_core_fwd(q, k, v, lens, variant, sm_scale, config, interpret):
  o, lse = flash_forward(q, k, v, lens, variant, sm_scale=sm_scale, config=config,
                         interpret=interpret)
  return (o, jnp.swapaxes(lse, 1, 2)), (q, k, v, lens, variant, o, lse)


def _attention_core_bwd(sm_scale, config, interpret, res, cts):
  from jattn.pallas import prefill_bwd
  q, k, v, lens, variant, o, lse = res
  do, dlse = cts
  dq, dk, dv = prefill_bwd.flash_backward(q, k, v, lens, variant, o, lse, do,
                                          jnp.swapaxes(dlse, 1, 2), sm_scale=sm_scale,
                                          interpret=interpret)
  zero_variant = jax.tree.map(jnp.zeros_like, variant)
  return dq, dk, dv, None, zero_variant


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def _kernel_variant(variant: Variant) -> Variant:
  """The part of a variant the kernel traces (the token transforms ran before it)."""
  return Variant(logits_transform=variant.logits_transform, logits_mask=variant.logits_mask,
                 params=variant.params, band=variant.band, name=variant.name)


def attention(q, k, v, *, sm_scale, variant, q_lengths, kv_lengths, interpret=False,
              config: Optional[Config] = None):
  """`jattn.attention` on the Pallas Mosaic GPU kernel. Returns (o, lse [B,T,Nq])."""
  B, T = q.shape[:2]
  S = k.shape[1]
  if config is None:
    config = pick_config("attention", q, k, v, batch=B, q_len=T, kv_len=S, variant=variant,
                         interpret=interpret)
  lens = _lens(B, T, S, q_lengths, kv_lengths)
  if lens is None and T <= 2 * config.block_q:   # one q tile: see the module docstring
    lens = _lens(B, T, S, jnp.full((B,), T, jnp.int32), None)
  q, k = token_transforms(q, k, variant, q_lengths, kv_lengths)
  return _attention_core(q, k, v, lens, _kernel_variant(variant), float(sm_scale), config,
                         interpret)


# ----------------------------------------------------------------------------- packed ops

def _segment_of(ends, n: int, num_segments: int):
  """For i in [0, n): the segment b whose end ends[b] (non-decreasing) is the first > i,
  clipped to [0, num_segments - 1]: searchsorted(ends, i, side="right") without loops.
  The default binary search is a scan (an XLA while loop): with it around the kernel the
  paged append ran at 382 TFLOP/s on an H200, without it 444 (harness runs 9ba092e2,
  cd4f1df4); a cumsum over the n rows was worse still (run f542bd96). One fused
  compare-and-count for a few segments, a sort for many."""
  i = jnp.arange(n, dtype=jnp.int32)
  method = "compare_all" if ends.shape[0] <= 64 else "sort"
  b = jnp.searchsorted(ends, i, side="right", method=method).astype(jnp.int32)
  return jnp.clip(b, 0, num_segments - 1)


def _slots(q_offsets, Tq, rows):
  """Tile slots of packed queries: (tiles int32 [3, n_slots] = (sequence, q tile, valid),
  n_slots static, and for each packed row its (slot, row within slot, valid))."""
  B = q_offsets.shape[0] - 1
  n_slots = -(-Tq // rows) + B
  q_len = q_offsets[1:] - q_offsets[:-1]
  n_t = (q_len + rows - 1) // rows
  end = jnp.cumsum(n_t)
  start = end - n_t
  t = jnp.arange(n_slots, dtype=jnp.int32)
  b = _segment_of(end, n_slots, B)
  valid = t < end[-1]
  qt = jnp.where(valid, n_t[b] - 1 - (t - start[b]), 0)      # heaviest tile first
  tiles = jnp.stack([b, qt, valid.astype(jnp.int32)]).astype(jnp.int32)
  i = jnp.arange(Tq, dtype=jnp.int32)
  rb = _segment_of(q_offsets[1:], Tq, B)
  rvalid = (i >= q_offsets[0]) & (i < q_offsets[B])
  r = i - q_offsets[rb]
  slot = start[rb] + n_t[rb] - 1 - r // rows
  return tiles, n_slots, (jnp.clip(slot, 0, n_slots - 1), r % rows, rvalid)


def _gather_rows(o, lse, row_map):
  """Slot-major o [n_slots, rows, Nq, Dv], lse [Nq, n_slots, rows] -> packed rows."""
  slot, r, valid = row_map
  out = jnp.where(valid[:, None, None], o[slot, r], 0).astype(o.dtype)
  l = jnp.where(valid[:, None], jnp.moveaxis(lse, 0, -1)[slot, r], -jnp.inf)
  return out, l


def _packed_q_transform(q, variant, q_offsets, kv_len):
  if variant.query_transform is None:
    return q
  B = q_offsets.shape[0] - 1
  i = jnp.arange(q.shape[0], dtype=jnp.int32)
  b = _segment_of(q_offsets[1:], q.shape[0], B)
  q_len = q_offsets[1:] - q_offsets[:-1]
  q_pos = kv_len[b] - q_len[b] + i - q_offsets[b]
  Nq = q.shape[1]
  ctx = Context(q_pos=q_pos[:, None, None], kv_pos=None,
                head=jnp.arange(Nq, dtype=jnp.int32)[None, :, None], batch=b[:, None, None],
                params={n: jnp.reshape(p, (1, Nq, 1)) for n, p in variant.params.items()})
  return variant.query_transform(q.astype(jnp.float32), ctx).astype(q.dtype)


def _slot_queries(q, q_offsets, tiles, rows):
  """Packed q [Tq,Nq,D] -> slot-major [n_slots * rows, Nq, D] (zeros past q_len)."""
  n_slots = tiles.shape[1]
  q_len = q_offsets[1:] - q_offsets[:-1]
  b, qt = tiles[0][:, None], tiles[1][:, None]
  r = qt * rows + jnp.arange(rows, dtype=jnp.int32)[None, :]
  ok = (r < q_len[b]) & (tiles[2][:, None] > 0)
  src = jnp.where(ok, q_offsets[:-1][b] + r, 0).reshape(-1)
  out = jnp.where(ok.reshape(-1)[:, None, None], q[src], 0).astype(q.dtype)
  return out.reshape(n_slots * rows, *q.shape[1:])


def _aligned_kv(k, v, kv_offsets, block_kv):
  """Contiguous packed K/V -> each sequence starting on a block_kv boundary (TMA tiles
  must start on 8-row boundaries). Returns (k, v, starts int32 [B])."""
  kv_len = kv_offsets[1:] - kv_offsets[:-1]
  size = (kv_len + block_kv - 1) // block_kv * block_kv
  end = jnp.cumsum(size)
  start = end - size
  B = kv_len.shape[0]
  n = k.shape[0] + B * (block_kv - 1)
  n = -(-n // block_kv) * block_kv
  i = jnp.arange(n, dtype=jnp.int32)
  b = _segment_of(end, n, B)
  s = i - start[b]
  ok = s < kv_len[b]
  src = jnp.where(ok, kv_offsets[:-1][b] + s, 0)
  gather = lambda x: jnp.where(ok[:, None, None], x[src], 0).astype(x.dtype)
  return gather(k), gather(v), start.astype(jnp.int32)


def _packed_forward(q, k, v, kv_start, page_table, q_offsets, kv_len, variant, sm_scale,
                    interpret, config):
  Tq, Nq, D = q.shape
  Nkv, Dv = k.shape[-2], v.shape[-1]
  cfg = config or default_config(D, Dv, interpret, "prefill")
  rows = 2 * cfg.block_q
  q = _packed_q_transform(q, variant, q_offsets, kv_len)
  tiles, n_slots, row_map = _slots(q_offsets, Tq, rows)
  q_len = q_offsets[1:] - q_offsets[:-1]
  seq = jnp.stack([q_len, kv_len, kv_start]).astype(jnp.int32)
  qs = _slot_queries(q, q_offsets, tiles, rows)
  if page_table is not None:
    geo = Packed(Nq, n_slots, rows, True, k.shape[1], k.shape[0], cfg.block_kv)
    extra = [tiles, seq, page_table]
  else:
    geo = Packed(Nq, n_slots, rows, False)
    extra = [tiles, seq]
  out_types = (jax.ShapeDtypeStruct((n_slots, rows, Nq, Dv), q.dtype),
               jax.ShapeDtypeStruct((Nq, n_slots, rows), jnp.float32))
  o, lse = run_forward(geo, qs, k, v, extra, out_types, _kernel_variant(variant),
                       sm_scale=float(sm_scale), cfg=cfg, head_dim=D, v_head_dim=Dv,
                       group=Nq // Nkv, interpret=interpret)
  return _gather_rows(o, lse, row_map)


def prefill_ragged(q, k, v, q_offsets, kv_offsets, *, sm_scale, variant, interpret=False,
                   config: Optional[Config] = None):
  """`jattn.prefill_ragged` on the kernel: packed q [Tq,Nq,D] against contiguous packed
  k/v [Tk,Nkv,*]. Forward only (no VJP). Returns (o [Tq,Nq,Dv], lse [Tq,Nq])."""
  kv_len = kv_offsets[1:] - kv_offsets[:-1]
  if variant.key_transform is not None:
    Tk, Nkv = k.shape[:2]
    B = kv_offsets.shape[0] - 1
    i = jnp.arange(Tk, dtype=jnp.int32)
    b = _segment_of(kv_offsets[1:], Tk, B)
    ctx = Context(q_pos=None, kv_pos=(i - kv_offsets[b])[:, None, None],
                  head=jnp.arange(Nkv, dtype=jnp.int32)[None, :, None], batch=b[:, None, None],
                  params={})
    k = variant.key_transform(k.astype(jnp.float32), ctx).astype(k.dtype)
  cfg = config or pick_config("prefill_ragged", q, k, v, batch=q_offsets.shape[0] - 1,
                             q_len=q.shape[0], kv_len=k.shape[0], variant=variant,
                             interpret=interpret)
  k, v, kv_start = _aligned_kv(k, v, kv_offsets, cfg.block_kv)
  return _packed_forward(q, k, v, kv_start, None, q_offsets, kv_len, variant, sm_scale,
                         interpret, cfg)


def prefill(q, cache, page_table, kv_lens, q_offsets, *, sm_scale, variant, interpret=False,
            config: Optional[Config] = None):
  """`jattn.prefill` on the kernel: packed q [Tq,Nq,D] against the paged cache, K/V tiles
  TMA-loaded page by page through page_table (page ids clipped to the cache, lengths to
  the table). Forward only. Returns (o [Tq,Nq,Dv], lse [Tq,Nq])."""
  M, ps = page_table.shape[1], cache.k_pages.shape[1]
  kv_len = jnp.clip(kv_lens, 0, M * ps).astype(jnp.int32)
  config = config or pick_config("prefill", q, cache.k_pages, cache.v_pages,
                                 batch=page_table.shape[0], q_len=q.shape[0], kv_len=M * ps,
                                 variant=variant, interpret=interpret, page_size=ps)
  return _packed_forward(q, cache.k_pages, cache.v_pages, jnp.zeros_like(kv_len),
                         page_table.astype(jnp.int32), q_offsets, kv_len, variant, sm_scale,
                         interpret, config)
