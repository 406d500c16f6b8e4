"""Block-sparse attention: layouts mean what they say, and the op equals dense attention
with the expanded mask (forward and backward)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import block_sparse as bs, reference, variants as V
from conftest import assert_close, impl_params, oracle, randn


def _dense_oracle(q, k, v, mask, variant=None):
  """Dense attention with an explicit [Hl, T, S] element mask, in float64."""
  T, S = q.shape[1], k.shape[1]
  m = np.asarray(mask)

  def keep(ctx):
    h = ctx.head if m.shape[0] > 1 else jnp.zeros_like(ctx.head)
    return jnp.asarray(m)[h, ctx.q_pos - (S - T), ctx.kv_pos]

  var = V.compose(V.Variant(logits_mask=keep), variant)
  return oracle(reference.attention, q, k, v, sm_scale=q.shape[-1] ** -0.5, variant=var)


def test_layout_forms_agree(rng):
  m = rng.random((3, 5)) < 0.4
  a = bs.from_dense(m, (4, 8))
  indptr = np.concatenate([[0], np.cumsum(m.sum(1))])
  indices = np.concatenate([np.nonzero(r)[0] for r in m])
  b = bs.from_bsr(indptr, indices, (4, 8), num_key_blocks=5)
  np.testing.assert_array_equal(np.asarray(a.block_mask), np.asarray(b.block_mask))
  ip, ix = a.to_bsr()
  np.testing.assert_array_equal(np.asarray(ip[0]), indptr)
  np.testing.assert_array_equal(np.asarray(ix[0, :len(indices)]), indices)
  assert np.all(np.asarray(ix[0, len(indices):]) == -1)
  e = np.asarray(a.element_mask(12, 40))[0]
  np.testing.assert_array_equal(e, np.kron(m, np.ones((4, 8), bool)))
  np.testing.assert_allclose(float(a.density()[0]), m.mean())
  var = bs.variable(m, [[2, 6, 4]], [[8, 8, 8, 8, 8]])
  ev = np.asarray(var.element_mask(12, 40))[0]
  np.testing.assert_array_equal(ev[:2], np.repeat(np.kron(m[:1], np.ones((1, 8), bool)), 2, 0))
  np.testing.assert_array_equal(ev[2:8], np.repeat(np.kron(m[1:2], np.ones((1, 8), bool)), 6, 0))


def test_layout_builders(rng):
  lg = np.asarray(bs.local_global(64, 64, 8, window_blocks=2, global_blocks=1).block_mask[0])
  assert lg[5, 0] and lg[5, 4] and lg[5, 5] and not lg[5, 3] and not lg[2, 3]
  st = np.asarray(bs.strided(64, 64, 8, stride=3).block_mask[0])
  assert st[7, 2] and st[7, 5] and st[7, 7] and not st[7, 6] and not st[1, 2]
  q, k = randn(rng, (64, 4, 16), jnp.float32), randn(rng, (64, 2, 16), jnp.float32)
  tk = np.asarray(bs.topk(q, k, 8, k_blocks=3, causal=True).block_mask)
  assert tk.shape == (4, 8, 8)
  assert np.all(np.diagonal(tk, axis1=1, axis2=2))
  assert np.all(tk.sum(-1) <= 3 + 1) and not np.triu(tk[0], 1).any()
  # from_mask_fn: a document mask gives exactly the tiles that touch a document.
  doc = jnp.asarray(np.repeat([0, 1, 2], [20, 30, 14]), jnp.int32)
  fm = bs.from_mask_fn(lambda c: doc[jnp.clip(c.q_pos, 0, 63)] == doc[jnp.clip(c.kv_pos, 0, 63)],
                       64, 64, (16, 16))
  want = np.zeros((4, 4), bool)
  d = np.asarray(doc)
  for i in range(4):
    for j in range(4):
      want[i, j] = bool(np.intersect1d(d[16 * i:16 * i + 16], d[16 * j:16 * j + 16]).size)
  np.testing.assert_array_equal(np.asarray(fm.block_mask[0]), want)


@pytest.mark.parametrize("impl", impl_params("block_sparse_attention"))
@pytest.mark.parametrize("per_head", [False, True])
def test_block_sparse_matches_dense_mask(impl, per_head, rng):
  B, T, S, Nq, Nkv, D, blk = 2, 32, 48, 4, 2, 32, 8
  dtype = jnp.bfloat16
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
             randn(rng, (B, S, Nkv, D), dtype))
  m = rng.random((Nq if per_head else 1, T // blk, S // blk)) < 0.35
  m[:, 1] = False   # a block row with nothing: those queries return 0
  layout = bs.from_dense(m, (blk, blk))
  for causal in (False, True):
    o = jattn.block_sparse_attention(q, k, v, layout, causal=causal, implementation=impl)
    ro, _ = _dense_oracle(q, k, v, layout.element_mask(T, S), V.causal() if causal else None)
    assert_close(o, ro, dtype, what=f"{impl} causal={causal}")
    assert np.all(np.asarray(o)[:, blk:2 * blk] == 0)


@pytest.mark.parametrize("impl", impl_params("block_sparse_attention"))
def test_block_sparse_grad(impl, rng):
  B, T, S, Nq, D, blk = 1, 16, 16, 2, 16, 4
  dtype = jnp.float32
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nq, D), dtype),
             randn(rng, (B, S, Nq, D), dtype))
  layout = bs.local_global(T, S, blk, window_blocks=2)
  do = randn(rng, (B, T, Nq, D), dtype)
  g = jax.grad(lambda q, k, v: jnp.sum(jattn.block_sparse_attention(
      q, k, v, layout, implementation=impl) * do), argnums=(0, 1, 2))(q, k, v)
  mask = layout.element_mask(T, S)

  def ref_loss(q, k, v, do):
    keep = lambda ctx: mask[0][ctx.q_pos - (S - T), ctx.kv_pos]
    return jnp.sum(reference.attention(q, k, v, sm_scale=D ** -0.5,
                                       variant=V.Variant(logits_mask=keep))[0] * do)

  rg = oracle(jax.grad(ref_loss, argnums=(0, 1, 2)), q, k, v, do)
  for a, b in zip(g, rg):
    assert_close(a, b, dtype, scale=2)


def test_block_sparse_errors(rng):
  q = randn(rng, (1, 16, 2, 8), jnp.float32)
  with pytest.raises(ValueError, match="need"):
    jattn.block_sparse_attention(q, q, q, bs.from_dense(np.ones((3, 4), bool), (4, 4)))
  with pytest.raises(TypeError, match="BlockSparseLayout"):
    jattn.block_sparse_attention(q, q, q, np.ones((4, 4), bool))
