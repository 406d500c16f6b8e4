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


# Each refs_* returns [(pick, ref)]: `pick(out)` cuts the slice out of an implementation's
# canonical output, `ref` is that slice's float32 reference. A workload's references are
# computed once and compared with every implementation's output.

def refs_dense(wl: W.Workload, d: dict) -> list:
  """out: [B,T,Nq,Dv] for the inputs d (q, k, v)."""
  g = wl.group
  return [(lambda o, b=b, h=h: _group(o[b], h, g),
           ref_group(_group(d["q"][b], h, g), d["k"][b, :, h], d["v"][b, :, h], wl.kv_len,
                     causal=wl.causal, window=wl.window, scale=wl.sm_scale))
          for b, h in _slices(wl)]


def refs_decode(wl: W.Workload, p: dict) -> list:
  """out: [B,Nq,Dv] for the paged inputs p (q, cache, table, kv_lens): the first few
  sequences and the longest."""
  lens = np.asarray(p["kv_lens"])
  picks = sorted(set(range(min(3, wl.batch))) | {int(np.argmax(lens))})
  nkv, g, d = wl.num_kv_heads, wl.group, wl.head_dim
  per_head = jax.vmap(functools.partial(ref_group, causal=True, window=None,
                                        scale=wl.sm_scale), in_axes=(0, 1, 1, None))
  out = []
  for b in picks:
    k = W.gather_dense(p["cache"].k_pages, p["table"][b:b + 1])[0]  # [S, Nkv, D]
    v = W.gather_dense(p["cache"].v_pages, p["table"][b:b + 1])[0]
    q = p["q"][b].reshape(nkv, 1, g, d)
    ref = per_head(q, k, v, int(lens[b]))                           # [Nkv, 1, G, Dv]
    out.append((lambda o, b=b: o[b], ref.reshape(wl.num_q_heads, -1)))
  return out


def refs_bwd(wl: W.Workload, d: dict) -> list:
  """out: (dq, dk, dv) of sum(attention(q, k, v) * do)."""
  g = wl.group

  @jax.jit
  def grads(q, k, v, do, kv_len):
    def loss(q, k, v):
      o = ref_group(q, k, v, kv_len, causal=wl.causal, window=wl.window, scale=wl.sm_scale)
      return jnp.sum(o * do.astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))

  out = []
  for b, h in _slices(wl):
    rq, rk, rv = grads(_group(d["q"][b], h, g), d["k"][b, :, h], d["v"][b, :, h],
                       _group(d["do"][b], h, g), wl.kv_len)
    out += [(lambda o, b=b, h=h: _group(o[0][b], h, g), rq),
            (lambda o, b=b, h=h: o[1][b, :, h], rk), (lambda o, b=b, h=h: o[2][b, :, h], rv)]
  return out


def refs_mla(wl: W.Workload, m: dict) -> list:
  """out: [B,H,Dv] for the MLA inputs m; key = [ckv, kpe], value = ckv, one kv head."""
  lens = np.asarray(m["kv_lens"])
  out = []
  for b in sorted(set(range(min(3, wl.batch))) | {wl.batch - 1}):
    ckv = m["ckv"][m["table"][b]].reshape(-1, wl.dv)
    k = jnp.concatenate([ckv, m["kpe"][m["table"][b]].reshape(ckv.shape[0], -1)], -1)
    q = jnp.concatenate([m["q_nope"][b], m["q_pe"][b]], -1)[None]      # [1, H, D]
    ref = ref_group(q, k, ckv, int(lens[b]), causal=True, window=None, scale=wl.sm_scale)
    out.append((lambda o, b=b: o[b], ref[0]))
  return out


def refs_block_sparse(wl: W.Workload, d: dict, layout) -> list:
  """out: [B,T,Nq,Dv]; two (sequence, query head) slices against the expanded mask."""
  out = []
  for b, h in sorted({(0, 0), (wl.batch - 1, wl.num_q_heads - 1)}):
    keep = layout.element_mask(wl.q_len, wl.kv_len)[h if layout.num_heads > 1 else 0]
    kvh = h // wl.group
    ref = ref_group(d["q"][b][:, h:h + 1], d["k"][b, :, kvh], d["v"][b, :, kvh], wl.kv_len,
                    causal=False, window=None, scale=wl.sm_scale, keep=keep[None])
    out.append((lambda o, b=b, h=h: o[b][:, h:h + 1], ref))
  return out


def references(wl: W.Workload, data) -> list:
  """The workload's [(pick, ref)]; `data` is impls.Data."""
  if wl.kind == "mla":
    return refs_mla(wl, data.mla[0])
  if wl.kind == "block_sparse":
    return refs_block_sparse(wl, data.dense[0], data.layout)
  if wl.kind == "decode":
    return refs_decode(wl, data.paged[0])
  if wl.kind == "bwd":
    return refs_bwd(wl, data.dense[0])
  return refs_dense(wl, data.dense[0])


def check(wl: W.Workload, data, out) -> float:
  """Largest relative error of `out` (canonical layout, computed from the first input
  set) over the slices; the references are computed on the first call per workload and
  kept in `data`."""
  refs = data.memo("refs", lambda: [(pick, np.asarray(r)) for pick, r in references(wl, data)])
  return max(rel_err(pick(out), ref) for pick, ref in refs)
