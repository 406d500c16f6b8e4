"""Cheap correctness checks for timed outputs: a float32 (HIGHEST precision) reference on
slices, written here independently of jattn.reference so that it also checks jattn's XLA path.

A slice is one sequence and one kv head with its group of query heads, all query rows;
dense workloads check two slices (first sequence/first kv head, last/last), decode checks
the first few sequences and the longest one, bwd checks dq, dk, dv of the same slices.
The figure is the largest ||x - ref|| / ||ref|| over the slices (as in tests/conftest.py);
NaN or a non-finite value gives inf.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import workloads as W
from jattn.bench.definitions import rel_err

HI = jax.lax.Precision.HIGHEST
# The references' float32 products run once: XLA's GEMM autotuning (seconds per new dot
# shape on a GPU, 7-12 s per prefill workload) is not worth it for them.
NO_AUTOTUNE = {"xla_gpu_autotune_level": 0}


@functools.partial(jax.jit, static_argnames=("causal", "window", "scale"))
def ref_group(q, k, v, kv_len, *, causal, window, scale, keep=None):
  """q [T,G,D], k [S,D], v [S,Dv] -> [T,G,Dv] float32. Bottom-right aligned: query t sits
  at position kv_len - T + t; keys >= kv_len are invalid; `keep` (bool [G,T,S]) masks
  further. Rows with no key give 0."""
  T = q.shape[0]
  S = k.shape[0]
  qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
  s = jnp.einsum("tgd,sd->gts", qf, kf, precision=HI) * scale
  p = kv_len - T + jnp.arange(T)[:, None]
  j = jnp.arange(S)[None, :]
  keep_ = j < kv_len
  if causal:
    keep_ &= j <= p
  if window is not None:
    keep_ &= j >= p - window
  keep_ = keep_[None] if keep is None else keep_[None] & keep
  s = jnp.where(keep_, s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.where(keep_, jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0)), 0)
  l = e.sum(-1, keepdims=True)
  o = jnp.einsum("gts,sd->tgd", e / jnp.where(l > 0, l, 1), vf, precision=HI)
  return o


def _slices(wl):
  return sorted({(0, 0), (wl.batch - 1, wl.num_kv_heads - 1)})


def _group(x, h, g):
  return x[:, h * g:(h + 1) * g]


# Each plan_* returns (picks, fn, args): `fn(*args)` computes the slices' float32
# references, `picks[i](out)` cuts slice i out of an implementation's canonical output.
# Both run jitted (one compile per workload, not one per eager slice op), the references
# once per workload, the picks once per row.

def plan_dense(wl: W.Workload, d: dict):
  """out: [B,T,Nq,Dv] for the inputs d (q, k, v)."""
  g, sl = wl.group, _slices(wl)
  fn = lambda q, k, v: [ref_group(_group(q[b], h, g), k[b, :, h], v[b, :, h], wl.kv_len,
                                  causal=wl.causal, window=wl.window, scale=wl.sm_scale)
                        for b, h in sl]
  picks = [lambda o, b=b, h=h: _group(o[b], h, g) for b, h in sl]
  return picks, fn, (d["q"], d["k"], d["v"])


def plan_decode(wl: W.Workload, p: dict):
  """out: [B,Nq,Dv] for the paged inputs p (q, cache, table, kv_lens): the first few
  sequences and the longest."""
  lens = np.asarray(p["kv_lens"])
  sel = sorted(set(range(min(3, wl.batch))) | {int(np.argmax(lens))})
  nkv, g, d = wl.num_kv_heads, wl.group, wl.head_dim
  per_head = jax.vmap(functools.partial(ref_group, causal=True, window=None,
                                        scale=wl.sm_scale), in_axes=(0, 1, 1, None))

  def fn(q, k_pages, v_pages, table):
    refs = []
    for b in sel:
      k = W.gather_dense(k_pages, table[b:b + 1])[0]                # [S, Nkv, D]
      v = W.gather_dense(v_pages, table[b:b + 1])[0]
      ref = per_head(q[b].reshape(nkv, 1, g, d), k, v, int(lens[b]))  # [Nkv, 1, G, Dv]
      refs.append(ref.reshape(wl.num_q_heads, -1))
    return refs
  picks = [lambda o, b=b: o[b] for b in sel]
  return picks, fn, (p["q"], p["cache"].k_pages, p["cache"].v_pages, p["table"])


def plan_bwd(wl: W.Workload, d: dict):
  """out: (dq, dk, dv) of sum(attention(q, k, v) * do)."""
  g, sl = wl.group, _slices(wl)

  def fn(q, k, v, do):
    refs = []
    for b, h in sl:
      def loss(qs, ks, vs):
        o = ref_group(qs, ks, vs, wl.kv_len, causal=wl.causal, window=wl.window,
                      scale=wl.sm_scale)
        return jnp.sum(o * _group(do[b], h, g).astype(jnp.float32))
      f32 = lambda x: x.astype(jnp.float32)
      refs += jax.grad(loss, argnums=(0, 1, 2))(f32(_group(q[b], h, g)), f32(k[b, :, h]),
                                                f32(v[b, :, h]))
    return refs
  picks = []
  for b, h in sl:
    picks += [lambda o, b=b, h=h: _group(o[0][b], h, g), lambda o, b=b, h=h: o[1][b, :, h],
              lambda o, b=b, h=h: o[2][b, :, h]]
  return picks, fn, (d["q"], d["k"], d["v"], d["do"])


def plan_mla(wl: W.Workload, m: dict):
  """out: [B,H,Dv] for the MLA inputs m; key = [ckv, kpe], value = ckv, one kv head."""
  lens = np.asarray(m["kv_lens"])
  sel = sorted(set(range(min(3, wl.batch))) | {wl.batch - 1})

  def fn(q_nope, q_pe, ckv_pages, kpe_pages, table):
    refs = []
    for b in sel:
      ckv = ckv_pages[table[b]].reshape(-1, wl.dv)
      k = jnp.concatenate([ckv, kpe_pages[table[b]].reshape(ckv.shape[0], -1)], -1)
      q = jnp.concatenate([q_nope[b], q_pe[b]], -1)[None]              # [1, H, D]
      refs.append(ref_group(q, k, ckv, int(lens[b]), causal=True, window=None,
                            scale=wl.sm_scale)[0])
    return refs
  picks = [lambda o, b=b: o[b] for b in sel]
  return picks, fn, (m["q_nope"], m["q_pe"], m["ckv"], m["kpe"], m["table"])


def plan_block_sparse(wl: W.Workload, d: dict, layout):
  """out: [B,T,Nq,Dv]; two (sequence, query head) slices against the expanded mask."""
  sl = sorted({(0, 0), (wl.batch - 1, wl.num_q_heads - 1)})

  def fn(q, k, v, layout):
    mask = layout.element_mask(wl.q_len, wl.kv_len)
    refs = []
    for b, h in sl:
      keep = mask[h if layout.num_heads > 1 else 0]
      kvh = h // wl.group
      refs.append(ref_group(q[b][:, h:h + 1], k[b, :, kvh], v[b, :, kvh], wl.kv_len,
                            causal=False, window=None, scale=wl.sm_scale, keep=keep[None]))
    return refs
  picks = [lambda o, b=b, h=h: o[b][:, h:h + 1] for b, h in sl]
  return picks, fn, (d["q"], d["k"], d["v"], layout)


def plan(wl: W.Workload, data):
  """The workload's (picks, fn, args); `data` is impls.Data."""
  if wl.kind == "mla":
    return plan_mla(wl, data.mla[0])
  if wl.kind == "block_sparse":
    return plan_block_sparse(wl, data.dense[0], data.layout)
  if wl.kind == "decode":
    return plan_decode(wl, data.paged[0])
  if wl.kind == "bwd":
    return plan_bwd(wl, data.dense[0])
  return plan_dense(wl, data.dense[0])


def check(wl: W.Workload, data, out) -> float:
  """Largest relative error of `out` (canonical layout, computed from the first input
  set) over the slices. The references are computed on the first call per workload and
  kept in `data` with the jitted picks."""
  def make():
    picks, fn, args = plan(wl, data)
    refs = [np.asarray(r) for r in jax.jit(fn, compiler_options=NO_AUTOTUNE)(*args)]
    return jax.jit(lambda o: [p(o) for p in picks]), refs
  pick_all, refs = data.memo("refs", make)
  return max(rel_err(got, ref) for got, ref in zip(pick_all(out), refs))
