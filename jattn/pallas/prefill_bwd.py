"""Backward of the prefill/attention kernel: two Pallas Mosaic GPU kernels.

Inputs as the forward saw them (after the per-token transforms): q [B,T,Nq,D],
k [B,S,Nkv,D], v [B,S,Nkv,Dv], the forward's o and lse [B,Nq,T] (natural log), the
cotangents do [B,T,Nq,Dv] and dlse [B,Nq,T]. With s_raw = sm_scale q.k, s = f(s_raw) (the
variant's logits_transform, identity if none), p = exp(s - lse) on visible keys:

  delta_i = sum(do_i * o_i) - dlse_i         (XLA pre-pass, [B,Nq,T] float32)
  dp_ij   = do_i . v_j
  ds_ij   = p_ij (dp_ij - delta_i) * f'(s_raw_ij)   (f' through jax.vjp of the variant's
                                                   plain function, traced in the kernel)
  dq_i = sm_scale sum_j ds_ij k_j,  dk_j = sm_scale sum_i ds_ij q_i,  dv_j = sum_i p_ij do_i

Kernels (2 consumer warpgroups + 1 TMA producer warpgroup each):
  * dK/dV: one CTA per 2 * block_kv keys of one kv head; it walks every query head of the
    GQA group and every query tile inside the band, so the group's contributions are summed
    in registers (no atomics, one write of dk and dv).
  * dQ: one CTA per 2 * block_q query rows of one head; it walks the band's KV tiles.
Block-sparse (`SparseLists`): dQ walks each q tile's kv-tile list and dK/dV each kv tile's
q-tile list (per head of the group); a ring slot holds one tile per consumer warpgroup.
Rows with lse = -inf (past q_len, or seeing no key) get lse = +inf here, hence p = 0, and
contribute nothing. Only tiles inside the band are visited; tiles wholly inside the band
and below kv_len skip the mask, edge tiles (every tile with a custom mask) evaluate it.
dV and dP^T are issued as one wgmma group (one wait for both).

Measured (H100, B4 T4096 H32 D128 causal, benchmarks/NOTES.md): forward + backward
4.4-4.6 ms against cuDNN's 4.3-4.4 ms; the dK/dV kernel ~1.9 ms, the dQ kernel ~1.45 ms
(`benchmarks/bwd_probe.py`). The dQ kernel recomputes S and dP (7 products per tile pair
instead of 5). Summing dQ inside the dK/dV kernel instead (dS^T exchanged in SMEM, TMA
reduce-adds into float32) was built and measured in session 9: 3-5 % faster on MHA,
10-13 % slower on GQA 32/8, so not kept (NOTES, "Session 9"; code in the history). Not
tried: ping-pong scheduling of the two consumer warpgroups.

Limits: head_dim and v_head_dim <= 128 (dK and dV accumulators of both must fit in one
warpgroup's registers); wider heads fall back to `jax.vjp` of the XLA reference, which
`flash_backward` says in its docstring and `bwd_supports` reports.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jattn import reference
from jattn.pallas.prefill import (LOG2E, _ROW, _WGMMA, _pad_to, _tiled_smem, band_tiles,
                                  full_tiles,
                                  interpret_params, mma_acc)
from jattn.variants import Context, Variant

_COL = plgpu.Layout.WGMMA.reduce(0)


def seq_lens(lens_ref, b, static):
  """(q_len, kv_len) of sequence b: from lens_ref [2, B], or the static full lengths."""
  if lens_ref is None:
    return static
  return lens_ref[0, b], lens_ref[1, b]


def split_refs(refs, n_front, has_lens, n_params, n_out):
  """Unpack kernel refs: front inputs, lens (or None), params, outputs, rest."""
  front, refs = refs[:n_front], refs[n_front:]
  lens_ref, refs = (refs[0], refs[1:]) if has_lens else (None, refs)
  params, refs = refs[:n_params], refs[n_params:]
  return front, lens_ref, params, refs[:n_out], refs[n_out:]


@dataclasses.dataclass(frozen=True)
class BwdConfig:
  block_q: int = 64
  block_kv: int = 64
  num_stages: int = 2


def bwd_supports(head_dim: int, v_head_dim: int) -> Optional[str]:
  if max(head_dim, v_head_dim) > 128:
    return f"head dims ({head_dim}, {v_head_dim}) > 128: dK/dV accumulators do not fit"
  return None


def _scaled_logits(variant, sm_scale, s, ctx):
  """q.k tile -> (base-2 logits, and s_raw for the derivative)."""
  s_raw = s * sm_scale
  if variant.logits_transform is None:
    return s_raw * LOG2E, s_raw
  return variant.logits_transform(s_raw, ctx) * LOG2E, s_raw


def _transform_grad(variant, ctx, s_raw, ds):
  """ds * f'(s_raw) for the elementwise logits_transform f (identity: ds)."""
  if variant.logits_transform is None:
    return ds
  _, vjp = jax.vjp(lambda x: variant.logits_transform(x, ctx), s_raw)
  return vjp(ds)[0]


def _keep(variant, ctx, kv_len):
  """Keys below kv_len that the variant keeps. (Rows past q_len need no mask: their
  lse is +inf in the backward, so p = 0.)"""
  keep = ctx.kv_pos < kv_len
  if variant.logits_mask is not None:
    keep = jnp.logical_and(keep, variant.logits_mask(ctx))
  return keep


# ----------------------------------------------------------------------------- dK / dV

def mma_pair(acc, a, b_ref, c_ref, d_ref, interpret):
  """(acc + a @ b_ref, c_ref @ d_ref) with one wait for both wgmmas (a: registers)."""
  zeros = plgpu.layout_cast(jnp.zeros((c_ref.shape[0], d_ref.shape[1]), jnp.float32), _WGMMA)
  if interpret:
    def cd(ref):
      plgpu.wgmma(ref, c_ref, d_ref)
      return ref[...]
    return (mma_acc(acc, a, b_ref, interpret),
            pl.run_scoped(cd, plgpu.ACC(zeros.shape, jnp.float32)))

  def fn(refs):
    acc_ref, cd_ref = refs
    plgpu.wgmma(acc_ref, a, b_ref)
    plgpu.wgmma(cd_ref, c_ref, d_ref)

  return pl.run_state(fn)((plgpu.ACC.init(acc), plgpu.ACC.init(zeros)))


def _full_q_tiles(variant, w0, bkv, bq, kv_len, off, qlo, qhi):
  """Sub-range [a, b) of query tiles [qlo, qhi) in which every (query, key) pair of the
  keys [w0, w0 + bkv) is inside the band and below kv_len (no mask needed)."""
  if variant.has_custom_mask:
    return qhi, qhi
  left, right = variant.band if variant.band is not None else (None, None)
  a = qlo
  if right is not None:
    a = jnp.clip(lax.div(jnp.maximum(w0 + bkv - 1 - off - right, 0) + bq - 1, bq), qlo, qhi)
  b = qhi
  if left is not None:
    b = jnp.clip(lax.div(jnp.maximum(w0 + left - off + 1, 0), bq), a, qhi)
  return a, jnp.where(w0 + bkv <= kv_len, b, a)


def copy_or_arrive(active, src, dst, bar):
  """TMA src -> dst arriving on bar, or (inactive) a plain arrival in its place."""
  pl.when(active)(lambda: plgpu.copy_gmem_to_smem(src, dst, bar))
  pl.when(jnp.logical_not(active))(lambda: plgpu.barrier_arrive(bar))


def _dkv_body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lens_ref, param_refs,
              dk_ref, dv_ref, scratch, *, cfg, variant, sm_scale, group, param_names,
              interpret, static_lens, lists=None):
  """lists: None (dense: the band's q tiles) or (cols table ref, per_head, header) for
  block-sparse: consumer c walks, per head of the group, the q tiles that its kv tile's
  list names; ring slots hold one q/do/lse/delta tile per consumer (see SparseLists)."""
  bq, bkv, stages = cfg.block_q, cfg.block_kv, cfg.num_stages
  (k_smem2, v_smem2, q_smem, do_smem, lse_smem, delta_smem, kv_bar, in_bar, in_free) = scratch
  dtype = k_ref.dtype
  b = lax.axis_index("b")
  g = lax.axis_index("g")
  kt = lax.axis_index("kt")
  wg = lax.axis_index("wg")
  q_len, kv_len = seq_lens(lens_ref, b, static_lens)
  off = kv_len - q_len
  k0 = kt * (2 * bkv)
  k_last = jnp.minimum(k0 + 2 * bkv, kv_len) - 1
  left, right = variant.band if variant.band is not None else (None, None)
  t_min = jnp.maximum(0 if right is None else k0 - right - off, 0)
  t_max = q_len - 1 if left is None else jnp.minimum(k_last + left - off, q_len - 1)
  qlo = lax.div(t_min, bq)
  qhi = jnp.where(jnp.logical_and(t_max >= t_min, k_last >= k0),
                  lax.div(t_max + bq, bq), qlo)
  n_tiles = qhi - qlo
  steps = group * n_tiles

  def coords(s):
    n = jnp.maximum(n_tiles, 1)
    return g * group + lax.div(s, n), qlo + lax.rem(s, n)

  @pl.when(wg < 2)
  def _consumer():
    plgpu.set_max_registers(232, action="increase")
    w0 = k0 + wg * bkv
    k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
    plgpu.copy_gmem_to_smem(k_ref.at[b, pl.ds(w0, bkv), g], k_smem, kv_bar.at[wg])
    plgpu.copy_gmem_to_smem(v_ref.at[b, pl.ds(w0, bkv), g], v_smem, kv_bar.at[wg])
    plgpu.barrier_wait(kv_bar.at[wg])

    def iota(d):
      return plgpu.broadcasted_iota(jnp.int32, (bkv, bq), d, layout=_WGMMA)

    def tile(carry, slot, hq, q0, masked, at):
      """Query rows [q0(), q0() + bq) of head hq (ring slot `slot`) against this
      warpgroup's keys; `at(ref)` picks the warpgroup's tile of a ring slot."""
      dk, dv = carry
      plgpu.barrier_wait(in_bar.at[slot])
      qs, dos = at(q_smem.at[slot]), at(do_smem.at[slot])

      def kq(acc_ref):
        plgpu.wgmma(acc_ref, k_smem, qs.T)
        return acc_ref[...]

      sT = pl.run_scoped(kq, plgpu.ACC((bkv, bq), jnp.float32))
      ctx = Context(q_pos=off + q0() + iota(1), kv_pos=w0 + iota(0), head=hq, batch=b,
                    params={n: r[hq] for n, r in zip(param_names, param_refs)})
      t, s_raw = _scaled_logits(variant, sm_scale, sT, ctx)
      lse = plgpu.load(at(lse_smem.at[slot]), layout=_COL)
      pT = jnp.exp2(t - lax.broadcast_in_dim(lse, t.shape, [1]))
      if masked:
        pT = jnp.where(_keep(variant, ctx, kv_len), pT, 0.0)
      dv, dpT = mma_pair(dv, pT.astype(dtype), dos, v_smem, dos.T, interpret)
      delta = plgpu.load(at(delta_smem.at[slot]), layout=_COL)
      dsT = pT * (dpT - lax.broadcast_in_dim(delta, dpT.shape, [1]))
      dsT = _transform_grad(variant, ctx, s_raw, dsT)
      dk = mma_acc(dk, dsT.astype(dtype), qs, interpret)
      plgpu.barrier_arrive(in_free.at[slot])
      return dk, dv

    if lists is None:
      a, bb = _full_q_tiles(variant, w0, bkv, bq, kv_len, off, qlo, qhi)

      def step(i, carry, j, masked):
        """Query tile i of the group's j-th head against this warpgroup's keys."""
        slot = lax.rem(j * n_tiles + (i - qlo), stages)
        return tile(carry, slot, g * group + j, lambda: i * bq, masked, lambda r: r)

      def head(j, carry):
        carry = lax.fori_loop(qlo, a, functools.partial(step, j=j, masked=True), carry)
        carry = lax.fori_loop(a, bb, functools.partial(step, j=j, masked=False), carry)
        return lax.fori_loop(bb, qhi, functools.partial(step, j=j, masked=True), carry)
    else:
      table, per_head, header = lists
      col = lax.div(k0, bkv)

      def head(j, carry):
        """Own list [0, nf) whole, [nf, n) masked; idle to the longer list's end."""
        dk, dv, base = carry
        hq = g * group + j
        hl = hq if per_head else 0
        n, nf = table[hl, col + wg, 0], table[hl, col + wg, 1]
        steps_j = jnp.maximum(table[hl, col, 0], table[hl, col + 1, 0])

        def step(i, carry, masked):
          q0 = lambda: table[hl, col + wg, header + i] * bq
          return tile(carry, lax.rem(base + i, stages), hq, q0, masked, lambda r: r.at[wg])

        def idle(i, carry):
          slot = lax.rem(base + i, stages)
          plgpu.barrier_wait(in_bar.at[slot])
          plgpu.barrier_arrive(in_free.at[slot])
          return carry

        c = lax.fori_loop(0, nf, functools.partial(step, masked=False), (dk, dv))
        c = lax.fori_loop(nf, n, functools.partial(step, masked=True), c)
        c = lax.fori_loop(n, steps_j, idle, c)
        return (*c, base + steps_j)

    d, dvd = k_smem.shape[-1], v_smem.shape[-1]
    dk = plgpu.layout_cast(jnp.zeros((bkv, d), jnp.float32), _WGMMA)
    dv = plgpu.layout_cast(jnp.zeros((bkv, dvd), jnp.float32), _WGMMA)
    if lists is None:
      dk, dv = lax.fori_loop(0, group, head, (dk, dv))
    else:
      dk, dv, _ = lax.fori_loop(0, group, head, (dk, dv, 0))
    k_smem[...] = (dk * sm_scale).astype(dtype)
    v_smem[...] = dv.astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[b, pl.ds(w0, bkv), g])
    plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[b, pl.ds(w0, bkv), g])
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  def _sparse_producer():
    plgpu.set_max_registers(40, action="decrease")
    table, per_head, header = lists
    col = lax.div(k0, bkv)

    def head(j, base):
      hq = g * group + j
      hl = hq if per_head else 0
      n = (table[hl, col, 0], table[hl, col + 1, 0])
      steps_j = jnp.maximum(*n)

      @pl.loop(0, steps_j)
      def _(i):
        s = base + i
        slot = lax.rem(s, stages)
        tiles = (table[hl, col, header + i], table[hl, col + 1, header + i])

        @pl.when(s >= stages)
        def _():
          plgpu.barrier_wait(in_free.at[slot])

        bar = in_bar.at[slot]
        for c in range(2):
          rows = pl.ds(tiles[c] * bq, bq)
          for src, dst in ((q_ref.at[b, rows, hq], q_smem), (do_ref.at[b, rows, hq], do_smem),
                           (lse_ref.at[b, hq, rows], lse_smem),
                           (delta_ref.at[b, hq, rows], delta_smem)):
            copy_or_arrive(i < n[c], src, dst.at[slot, c], bar)

      return base + steps_j

    total = lax.fori_loop(0, group, head, 0)

    @pl.loop(jnp.maximum(total - stages, 0), total)   # releases nobody waited for
    def _(s):
      plgpu.barrier_wait(in_free.at[lax.rem(s, stages)])

  def _producer():
    plgpu.set_max_registers(40, action="decrease")

    def load(s, slot):
      hq, i = coords(s)
      rows = pl.ds(i * bq, bq)
      bar = in_bar.at[slot]
      plgpu.copy_gmem_to_smem(q_ref.at[b, rows, hq], q_smem.at[slot], bar)
      plgpu.copy_gmem_to_smem(do_ref.at[b, rows, hq], do_smem.at[slot], bar)
      plgpu.copy_gmem_to_smem(lse_ref.at[b, hq, rows], lse_smem.at[slot], bar)
      plgpu.copy_gmem_to_smem(delta_ref.at[b, hq, rows], delta_smem.at[slot], bar)

    for i in range(stages):
      pl.when(i < steps)(functools.partial(load, i, i))

    @pl.loop(0, steps)
    def _(s):
      slot = lax.rem(s, stages)
      plgpu.barrier_wait(in_free.at[slot])

      @pl.when(s + stages < steps)
      def _():
        load(s + stages, slot)

  pl.when(wg == 2)(_producer if lists is None else _sparse_producer)


def _dkv(q, k, v, do, lse2, delta, lens, variant, sm_scale, cfg, interpret, static_lens,
         sparse=None):
  B, Tp, Nq, D = q.shape
  _, Sp, Nkv, Dv = v.shape
  names = tuple(sorted(variant.params))
  params = tuple(jnp.asarray(variant.params[n]) for n in names)
  dtype = k.dtype
  front = (q, k, v, do, lse2, delta) + (() if sparse is None else (sparse.cols,))

  def entry(*refs):
    fr, lens_ref, param_refs, (dk_ref, dv_ref), _ = split_refs(
        refs, len(front), lens is not None, len(names), 2)
    lists = None if sparse is None else (fr[6], sparse.per_head, sparse.header)
    st = cfg.num_stages
    ring = (st,) if sparse is None else (st, 2)    # sparse: one tile per consumer
    scratch = (
        _tiled_smem((2, cfg.block_kv, D), dtype),
        _tiled_smem((2, cfg.block_kv, Dv), dtype),
        _tiled_smem((*ring, cfg.block_q, D), dtype),
        _tiled_smem((*ring, cfg.block_q, Dv), dtype),
        plgpu.SMEM((*ring, cfg.block_q), jnp.float32),
        plgpu.SMEM((*ring, cfg.block_q), jnp.float32),
        plgpu.Barrier(num_arrivals=2, num_barriers=2),
        plgpu.Barrier(num_arrivals=4 * len(ring), num_barriers=st),
        plgpu.Barrier(num_arrivals=2, num_barriers=st),
    )
    body = functools.partial(_dkv_body, *fr[:6], lens_ref, param_refs, dk_ref, dv_ref,
                             cfg=cfg, variant=variant, sm_scale=sm_scale, group=Nq // Nkv,
                             param_names=names, interpret=bool(interpret),
                             static_lens=static_lens, lists=lists)
    pl.run_scoped(lambda *s: body(s), *scratch, collective_axes="wg")

  return plgpu.kernel(
      entry,
      out_type=(jax.ShapeDtypeStruct(k.shape, dtype), jax.ShapeDtypeStruct(v.shape, dtype)),
      grid=(B, Nkv, Sp // (2 * cfg.block_kv)),
      grid_names=("b", "g", "kt"),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=interpret_params(interpret),
  )(*front, *([] if lens is None else [lens]), *params)


# ----------------------------------------------------------------------------- dQ

def _dq_body(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, lens_ref, param_refs, dq_ref,
             scratch, *, cfg, variant, sm_scale, group, num_q_tiles, param_names, interpret,
             static_lens, lists=None):
  """lists: None (dense: the band's kv tiles) or (rows table ref, per_head, header) for
  block-sparse: consumer c walks its q tile's kv-tile list, ring slots hold one K/V tile
  per consumer, both step to the longer list's end (see SparseLists)."""
  bq, bkv, stages = cfg.block_q, cfg.block_kv, cfg.num_stages
  (q_smem2, do_smem2, lse_smem2, delta_smem2, k_smem, v_smem, q_bar, k_bar, kv_free) = scratch
  dtype = q_ref.dtype
  b = lax.axis_index("b")
  h = lax.axis_index("h")
  qt = num_q_tiles - 1 - lax.axis_index("qt")
  wg = lax.axis_index("wg")
  q_len, kv_len = seq_lens(lens_ref, b, static_lens)
  off = kv_len - q_len
  r0 = qt * (2 * bq)
  rows_end = jnp.minimum(r0 + 2 * bq, q_len)
  if lists is None:
    lo, hi = band_tiles(variant, kv_len, off + r0, off + rows_end - 1, bkv)
  else:
    table, per_head, header = lists
    hl, row = (h if per_head else 0), lax.div(r0, bq)
    counts = (table[hl, row, 0], table[hl, row + 1, 0])
    lo, hi = 0, jnp.maximum(*counts)
  hi = jnp.where(rows_end > r0, hi, lo)

  def slot_of(j):
    return lax.rem(j - lo, stages)

  @pl.when(wg < 2)
  def _consumer():
    plgpu.set_max_registers(232, action="increase")
    w0 = r0 + wg * bq
    q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]
    plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(w0, bq), h], q_smem, q_bar.at[wg])
    plgpu.copy_gmem_to_smem(do_ref.at[b, pl.ds(w0, bq), h], do_smem, q_bar.at[wg])
    plgpu.copy_gmem_to_smem(lse_ref.at[b, h, pl.ds(w0, bq)], lse_smem2.at[wg], q_bar.at[wg])
    plgpu.copy_gmem_to_smem(delta_ref.at[b, h, pl.ds(w0, bq)], delta_smem2.at[wg],
                            q_bar.at[wg])
    params = {n: r[h] for n, r in zip(param_names, param_refs)}
    plgpu.barrier_wait(q_bar.at[wg])
    lse = plgpu.load(lse_smem2.at[wg], layout=_ROW)
    delta = plgpu.load(delta_smem2.at[wg], layout=_ROW)

    def iota(d):
      return plgpu.broadcasted_iota(jnp.int32, (bq, bkv), d, layout=_WGMMA)

    if lists is None:
      kv_at = lambda slot, ref: ref.at[slot]
      kv_start = lambda j: j * bkv
    else:
      kv_at = lambda slot, ref: ref.at[slot, wg]
      kv_start = lambda j: table[hl, row + wg, header + j] * bkv

    def step(j, dq, masked):
      slot = slot_of(j)
      plgpu.barrier_wait(k_bar.at[slot])

      def qk(acc_ref):
        plgpu.wgmma(acc_ref, q_smem, kv_at(slot, k_smem).T)
        return acc_ref[...]

      s = pl.run_scoped(qk, plgpu.ACC((bq, bkv), jnp.float32))
      ctx = Context(q_pos=off + w0 + iota(0), kv_pos=kv_start(j) + iota(1), head=h, batch=b,
                    params=params)
      t, s_raw = _scaled_logits(variant, sm_scale, s, ctx)
      p = jnp.exp2(t - lax.broadcast_in_dim(lse, t.shape, [0]))
      if masked:
        p = jnp.where(_keep(variant, ctx, kv_len), p, 0.0)

      def dov(acc_ref):
        plgpu.wgmma(acc_ref, do_smem, kv_at(slot, v_smem).T)
        return acc_ref[...]

      dp = pl.run_scoped(dov, plgpu.ACC((bq, bkv), jnp.float32))
      ds = p * (dp - lax.broadcast_in_dim(delta, dp.shape, [0]))
      ds = _transform_grad(variant, ctx, s_raw, ds)
      dq = mma_acc(dq, ds.astype(dtype), kv_at(slot, k_smem), interpret)
      plgpu.barrier_arrive(kv_free.at[slot])
      return dq

    def idle(j, dq):   # sparse, past this list's end: keep the ring's phases in step
      plgpu.barrier_wait(k_bar.at[slot_of(j)])
      plgpu.barrier_arrive(kv_free.at[slot_of(j)])
      return dq

    dq = plgpu.layout_cast(jnp.zeros((bq, q_smem.shape[-1]), jnp.float32), _WGMMA)
    if lists is None:
      w_last = jnp.maximum(jnp.minimum(w0 + bq, q_len) - 1, w0)
      a, bb = full_tiles(variant, kv_len, off + w0, off + w_last, bkv, lo, hi)
      segments = ((lo, a, True), (a, bb, False), (bb, hi, True))
    else:   # own list: [0, nf) whole tiles, [nf, n) masked, [n, hi) idle
      n, nf = table[hl, row + wg, 0], table[hl, row + wg, 1]
      segments = ((lo, nf, False), (nf, n, True))
    for start, stop, masked in segments:
      dq = lax.fori_loop(start, stop, functools.partial(step, masked=masked), dq)
    if lists is not None:
      dq = lax.fori_loop(n, hi, idle, dq)
    q_smem[...] = (dq * sm_scale).astype(dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[b, pl.ds(w0, bq), h])
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  @pl.when(wg == 2)
  def _producer():
    plgpu.set_max_registers(40, action="decrease")
    kvh = lax.div(h, group)

    def load(j, slot):
      if lists is not None:
        for c in range(2):
          rows = pl.ds(table[hl, row + c, header + j] * bkv, bkv)
          for src, dst in ((k_ref, k_smem), (v_ref, v_smem)):
            copy_or_arrive(j < counts[c], src.at[b, rows, kvh], dst.at[slot, c], k_bar.at[slot])
        return
      rows = pl.ds(j * bkv, bkv)
      plgpu.copy_gmem_to_smem(k_ref.at[b, rows, kvh], k_smem.at[slot], k_bar.at[slot])
      plgpu.copy_gmem_to_smem(v_ref.at[b, rows, kvh], v_smem.at[slot], k_bar.at[slot])

    for i in range(stages):
      pl.when(lo + i < hi)(functools.partial(load, lo + i, i))

    @pl.loop(lo, hi)
    def _(j):
      slot = slot_of(j)
      plgpu.barrier_wait(kv_free.at[slot])

      @pl.when(j + stages < hi)
      def _():
        load(j + stages, slot)


def _dq(q, k, v, do, lse2, delta, lens, variant, sm_scale, cfg, interpret, static_lens,
        sparse=None):
  B, Tp, Nq, D = q.shape
  _, Sp, Nkv, Dv = v.shape
  names = tuple(sorted(variant.params))
  params = tuple(jnp.asarray(variant.params[n]) for n in names)
  dtype = q.dtype
  num_q_tiles = Tp // (2 * cfg.block_q)
  front = (q, k, v, do, lse2, delta) + (() if sparse is None else (sparse.rows,))

  def entry(*refs):
    fr, lens_ref, param_refs, (dq_ref,), _ = split_refs(
        refs, len(front), lens is not None, len(names), 1)
    lists = None if sparse is None else (fr[6], sparse.per_head, sparse.header)
    st = cfg.num_stages
    ring = (st,) if sparse is None else (st, 2)    # sparse: one tile per consumer
    scratch = (
        _tiled_smem((2, cfg.block_q, D), dtype),
        _tiled_smem((2, cfg.block_q, Dv), dtype),
        plgpu.SMEM((2, cfg.block_q), jnp.float32),
        plgpu.SMEM((2, cfg.block_q), jnp.float32),
        _tiled_smem((*ring, cfg.block_kv, D), dtype),
        _tiled_smem((*ring, cfg.block_kv, Dv), dtype),
        plgpu.Barrier(num_arrivals=4, num_barriers=2),
        plgpu.Barrier(num_arrivals=2 * len(ring), num_barriers=st),
        plgpu.Barrier(num_arrivals=2, num_barriers=st),
    )
    body = functools.partial(_dq_body, *fr[:6], lens_ref, param_refs, dq_ref, cfg=cfg,
                             variant=variant, sm_scale=sm_scale, group=Nq // Nkv,
                             num_q_tiles=num_q_tiles, param_names=names,
                             interpret=bool(interpret), static_lens=static_lens, lists=lists)
    pl.run_scoped(lambda *s: body(s), *scratch, collective_axes="wg")

  return plgpu.kernel(
      entry,
      out_type=jax.ShapeDtypeStruct(q.shape, dtype),
      grid=(B, Nq, num_q_tiles),
      grid_names=("b", "h", "qt"),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(approx_math=True),
      interpret=interpret_params(interpret),
  )(*front, *([] if lens is None else [lens]), *params)


# ----------------------------------------------------------------------------- entry

@dataclasses.dataclass(frozen=True)
class SparseLists:
  """Block-sparse tile lists (`jattn.pallas.block_sparse.tile_lists`, tiles of
  block_q = block_kv rows): rows int32 [Hl, Tp / bq, header + nkt] (each q tile's kv
  tiles) and cols int32 [Hl, Sp / bkv, header + nqt] (each kv tile's q tiles), entries
  [n, n_whole, ...] with the ids from column `header`; Hl = Nq when per_head, else 1."""

  rows: Any
  cols: Any
  per_head: bool
  tile: int
  header: int


def flash_backward(q, k, v, lens, variant: Variant, o, lse, do, dlse, *, sm_scale: float,
                   config: Optional[BwdConfig] = None, interpret: Any = False,
                   sparse: Optional[SparseLists] = None):
  """(dq, dk, dv) for the forward's inputs. lse, dlse: [B,Nq,T] float32. With `sparse`
  the kernels visit only the listed tiles (the variant still masks inside them).

  Head dims above 128 are not served by the kernels yet: there the gradient is
  `jax.vjp` of the XLA reference (see `bwd_supports`; block-sparse checks it first)."""
  B, T, Nq, D = q.shape
  S, Dv = k.shape[1], v.shape[3]
  if bwd_supports(D, Dv) is not None:
    def f(q, k, v):
      return reference.attention(q, k, v, sm_scale=sm_scale, variant=variant,
                                 q_lengths=None if lens is None else lens[0],
                                 kv_lengths=None if lens is None else lens[1])
    _, vjp = jax.vjp(f, q, k, v)
    dq, dk, dv = vjp((do, jnp.swapaxes(dlse, 1, 2)))
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)

  cfg = config or (BwdConfig(sparse.tile, sparse.tile) if sparse else BwdConfig())
  delta = (jnp.einsum("btnd,btnd->bnt", do.astype(jnp.float32), o.astype(jnp.float32))
           - dlse.astype(jnp.float32))
  # Base-2 lse; rows without any visible key (lse = -inf) get +inf so that p = 0.
  lse2 = jnp.where(jnp.isfinite(lse), lse * LOG2E, jnp.inf).astype(jnp.float32)
  rows = 2 * max(cfg.block_q, cfg.block_kv)
  qp, dop = _pad_to(q, 1, rows), _pad_to(do.astype(q.dtype), 1, rows)
  lse2 = jnp.pad(lse2, ((0, 0), (0, 0), (0, -T % rows)), constant_values=jnp.inf)
  delta = _pad_to(delta, 2, rows)
  kp, vp = _pad_to(k, 1, rows), _pad_to(v, 1, rows)
  args = (qp, kp, vp, dop, lse2, delta, lens, variant, sm_scale, cfg, interpret, (T, S))
  dk, dv = _dkv(*args, sparse=sparse)
  dq = _dq(*args, sparse=sparse)
  return dq[:, :T], dk[:, :S], dv[:, :S]
