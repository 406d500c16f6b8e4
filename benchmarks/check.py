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

HI = jax.lax.Precision.HIGHEST


def rel_err(x, ref) -> float:
  x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
  ref = np.asarray(ref, np.float64)
  if x.shape != ref.shape or not np.isfinite(x).all():
    return float("inf")
  den = np.linalg.norm(ref)
  num = np.linalg.norm(x - ref)
  return float(num / den) if den > 0 else float(num)


@functools.partial(jax.jit, static_argnames=("causal", "window", "scale"))
def ref_group(q, k, v, kv_len, *, causal, window, scale):
  """q [T,G,D], k/v [S,D] -> [T,G,Dv] float32. Bottom-right aligned: query t sits at
  position kv_len - T + t; keys >= kv_len are invalid. Rows with no key give 0."""
  T = q.shape[0]
  S = k.shape[0]
  qf, kf, vf = (x.astype(jnp.float32) for x in (q, k, v))
  s = jnp.einsum("tgd,sd->gts", qf, kf, precision=HI) * scale
  p = kv_len - T + jnp.arange(T)[:, None]
  j = jnp.arange(S)[None, :]
  keep = j < kv_len
  if causal:
    keep &= j <= p
  if window is not None:
    keep &= j >= p - window
  s = jnp.where(keep[None], s, -jnp.inf)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.where(keep[None], jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0)), 0)
  l = e.sum(-1, keepdims=True)
  o = jnp.einsum("gts,sd->tgd", e / jnp.where(l > 0, l, 1), vf, precision=HI)
  return o


def _slices(wl):
  return sorted({(0, 0), (wl.batch - 1, wl.num_kv_heads - 1)})


def _group(x, h, g):
  return x[:, h * g:(h + 1) * g]


def check_dense(wl: W.Workload, d: dict, out) -> float:
  """out: [B,T,Nq,Dv] for the inputs d (q, k, v)."""
  g = wl.group
  err = 0.0
  for b, h in _slices(wl):
    ref = ref_group(_group(d["q"][b], h, g), d["k"][b, :, h], d["v"][b, :, h], wl.kv_len,
                    causal=wl.causal, window=wl.window, scale=wl.sm_scale)
    err = max(err, rel_err(_group(out[b], h, g), ref))
  return err


def check_decode(wl: W.Workload, p: dict, out) -> float:
  """out: [B,Nq,Dv] for the paged inputs p (q, cache, table, kv_lens)."""
  lens = np.asarray(p["kv_lens"])
  picks = sorted(set(range(min(3, wl.batch))) | {int(np.argmax(lens))})
  nkv, g, d = wl.num_kv_heads, wl.group, wl.head_dim
  per_head = jax.vmap(functools.partial(ref_group, causal=True, window=None,
                                        scale=wl.sm_scale), in_axes=(0, 1, 1, None))
  err = 0.0
  for b in picks:
    k = W.gather_dense(p["cache"].k_pages, p["table"][b:b + 1])[0]  # [S, Nkv, D]
    v = W.gather_dense(p["cache"].v_pages, p["table"][b:b + 1])[0]
    q = p["q"][b].reshape(nkv, 1, g, d)
    ref = per_head(q, k, v, int(lens[b]))                           # [Nkv, 1, G, Dv]
    err = max(err, rel_err(out[b], ref.reshape(wl.num_q_heads, -1)))
  return err


def check_bwd(wl: W.Workload, d: dict, grads) -> float:
  """grads: (dq, dk, dv) of sum(attention(q, k, v) * do)."""
  dq, dk, dv = grads
  g = wl.group
  err = 0.0
  for b, h in _slices(wl):
    def loss(q, k, v):
      o = ref_group(q, k, v, wl.kv_len, causal=wl.causal, window=wl.window, scale=wl.sm_scale)
      return jnp.sum(o * _group(d["do"][b], h, g).astype(jnp.float32))
    rq, rk, rv = jax.grad(loss, argnums=(0, 1, 2))(
        _group(d["q"][b], h, g).astype(jnp.float32), d["k"][b, :, h].astype(jnp.float32),
        d["v"][b, :, h].astype(jnp.float32))
    err = max(err, rel_err(_group(dq[b], h, g), rq), rel_err(dk[b, :, h], rk),
              rel_err(dv[b, :, h], rv))
  return err


def check(wl: W.Workload, data, out) -> float:
  """Dispatch on the workload kind; `data` is impls.Data, `out` in canonical layout."""
  if wl.kind == "decode":
    return check_decode(wl, data.paged[0], out)
  if wl.kind == "bwd":
    return check_bwd(wl, data.dense[0], out)
  return check_dense(wl, data.dense[0], out)
