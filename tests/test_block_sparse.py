"""Block-sparse attention: layouts mean what they say, and the op equals dense attention
with the expanded mask (forward and backward)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import block_sparse as bs, reference, variants as V
from conftest import assert_close, assert_lse_close, impl_params, oracle, randn


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
  # lengths that are not a multiple of the block: the last partial block counts too,
  # and the layout covers the call's (T, S)
  part = bs.topk(q[:60], k, 16, k_blocks=2, causal=True)
  assert part.block_mask.shape == (4, 4, 4)
  o = jattn.block_sparse_attention(q[None, :60], k[None], k[None], part, causal=True,
                                   implementation="xla")
  assert o.shape == (1, 60, 4, 16) and np.isfinite(np.asarray(o)).all()
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


# ----------------------------------------------------------------------------- 64x64 blocks
# The Pallas kernel serves blocks whose sides are multiples of 64 (smaller blocks above are
# passed over with its reason); these cases run it, interpreted on CPU.

def test_random_layout_exact_density():
  lay = bs.random_layout(3, 1000, 640, 64, 0.3, seed=5)
  m = np.asarray(lay.block_mask)
  assert m.shape == (3, 16, 10) and np.all(m.sum(-1) == 3)
  assert not np.array_equal(m[0], m[1])
  np.testing.assert_array_equal(m, np.asarray(bs.random_layout(3, 1000, 640, 64, 0.3, 5).block_mask))


def _bs64_inputs(rng, B, T, S, Nq, Nkv, D, heads):
  dtype = jnp.bfloat16
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
             randn(rng, (B, S, Nkv, D), dtype))
  m = rng.random((heads, -(-T // 64), -(-S // 64))) < 0.5
  m[:, 1:2] = False                   # an empty block row: those queries return 0
  return q, k, v, bs.from_dense(m, (64, 64))


@pytest.mark.parametrize("impl", impl_params("block_sparse_attention"))
@pytest.mark.parametrize("per_head,causal", [(False, True), (True, False)])
def test_block_sparse_64_forward(impl, per_head, causal, rng):
  B, T, S, Nq, Nkv, D = 1, 192, 256, 4, 2, 32   # GQA; T pads to the kernel's 128 rows
  q, k, v, lay = _bs64_inputs(rng, B, T, S, Nq, Nkv, D, Nq if per_head else 1)
  o, lse = jattn.block_sparse_attention(q, k, v, lay, causal=causal, return_lse=True,
                                        implementation=impl)
  var = V.causal() if causal else None
  ro, rl = _dense_oracle(q, k, v, lay.element_mask(T, S), var)
  assert_close(o, ro, jnp.bfloat16, what=f"{impl} per_head={per_head} causal={causal}")
  assert_lse_close(lse, rl, jnp.bfloat16)
  assert np.all(np.asarray(o)[:, 64:128] == 0)


@pytest.mark.parametrize("impl", impl_params("block_sparse_attention"))
def test_block_sparse_64_decode(impl, rng):
  """T = 1 (decode): one query against the listed key blocks of block row 0."""
  q, k, v, _ = _bs64_inputs(rng, 2, 1, 320, 4, 1, 32, 1)
  lay = bs.from_dense(rng.random((4, 1, 5)) < 0.6, (64, 64))
  o = jattn.block_sparse_attention(q, k, v, lay, implementation=impl)
  ro, _ = _dense_oracle(q, k, v, lay.element_mask(1, 320))
  assert_close(o, ro, jnp.bfloat16, what=impl)


@pytest.mark.parametrize("impl", impl_params("block_sparse_attention"))
def test_block_sparse_64_grad(impl, rng):
  """dq, dk, dv through the kernels' backward (dK/dV over the transposed lists): per-head
  layout, GQA, a causal variant with soft-cap (masked diagonal tiles, a transform)."""
  B, T, S, Nq, Nkv, D = 1, 256, 256, 4, 2, 32
  q, k, v, lay = _bs64_inputs(rng, B, T, S, Nq, Nkv, D, Nq)
  do = randn(rng, (B, T, Nq, D), jnp.float32)
  var = V.compose(V.causal(), V.soft_cap(20.0))
  loss = lambda q, k, v: jnp.sum(jattn.block_sparse_attention(
      q, k, v, lay, variant=var, implementation=impl).astype(jnp.float32) * do)
  g = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  mask = lay.element_mask(T, S)

  def ref_loss(q, k, v, do):
    keep = lambda ctx: mask[ctx.head, ctx.q_pos - (S - T), ctx.kv_pos]
    return jnp.sum(reference.attention(
        q, k, v, sm_scale=D ** -0.5,
        variant=V.compose(V.Variant(logits_mask=keep), var))[0] * do)

  rg = oracle(jax.grad(ref_loss, argnums=(0, 1, 2)), q, k, v, do)
  for name, a, b in zip("qkv", g, rg):
    assert_close(a, b, jnp.bfloat16, what=f"{impl} d{name}")


@pytest.mark.parametrize("impl", impl_params("block_sparse_attention"))
def test_block_sparse_plan(impl, rng):
  """A plan made once (here under jit, from a traced layout) and passed to jitted calls:
  same answer as the oracle, forward and backward (the backward reads the plan's
  transposed lists)."""
  B, T, S, Nq, Nkv, D = 1, 192, 256, 4, 2, 32
  q, k, v, lay = _bs64_inputs(rng, B, T, S, Nq, Nkv, D, Nq)
  plan = jax.jit(lambda l: jattn.plan_block_sparse(l, T, S, causal=True))(lay)
  assert plan.rows.shape == (Nq, 4, 3 + 4) and plan.num_heads == Nq

  @jax.jit
  def f(q, k, v, lay, plan):
    return jattn.block_sparse_attention(q, k, v, lay, causal=True, plan=plan,
                                        return_lse=True, implementation=impl)

  o, lse = f(q, k, v, lay, plan)
  mask = lay.element_mask(T, S)
  ro, rl = _dense_oracle(q, k, v, mask, V.causal())
  assert_close(o, ro, jnp.bfloat16, what=f"{impl} with plan")
  assert_lse_close(lse, rl, jnp.bfloat16)
  do = randn(rng, (B, T, Nq, D), jnp.float32)
  g = jax.grad(lambda q, k, v: jnp.sum(f(q, k, v, lay, plan)[0].astype(jnp.float32) * do),
               argnums=(0, 1, 2))(q, k, v)

  def ref_loss(q, k, v, do):
    keep = lambda ctx: mask[ctx.head, ctx.q_pos - (S - T), ctx.kv_pos]
    return jnp.sum(reference.attention(
        q, k, v, sm_scale=D ** -0.5,
        variant=V.compose(V.Variant(logits_mask=keep), V.causal()))[0] * do)

  rg = oracle(jax.grad(ref_loss, argnums=(0, 1, 2)), q, k, v, do)
  for name, a, b in zip("qkv", g, rg):
    assert_close(a, b, jnp.bfloat16, what=f"{impl} d{name} with plan")


def test_block_sparse_plan_errors(rng):
  q, k, v, lay = _bs64_inputs(rng, 1, 128, 128, 2, 2, 16, 1)
  plan = jattn.plan_block_sparse(lay, 128, 128)
  for kw, what in ((dict(causal=True), "band"), (dict(variant=V.Variant(
      logits_mask=lambda ctx: ctx.kv_pos > 3)), "custom_mask")):
    with pytest.raises(ValueError, match=f"another call.*{what}"):
      jattn.block_sparse_attention(q, k, v, lay, plan=plan, **kw)
  with pytest.raises(ValueError, match="q_len"):
    jattn.block_sparse_attention(q[:, :100], k, v, lay, plan=plan)
  with pytest.raises(TypeError, match="plan_block_sparse"):
    jattn.block_sparse_attention(q, k, v, lay, plan=(plan.rows, plan.cols))
  with pytest.raises(ValueError, match="multiples of 64"):
    jattn.plan_block_sparse(bs.from_dense(np.ones((4, 4), bool), (32, 32)), 128, 128)
  # a plan made from other tiles of the same shape: refused when both layouts are known
  other = bs.from_dense(~np.asarray(lay.block_mask), (64, 64))
  with pytest.raises(ValueError, match="tiles differ"):
    jattn.block_sparse_attention(q, k, v, other, plan=plan)
  same = bs.from_dense(np.asarray(lay.block_mask), (64, 64))    # equal tiles, new arrays
  assert plan.mismatch(same, 128, 128, V.Variant()) is None


def test_layout_digest_sees_offsets_of_a_shared_mask():
  """Layouts on one mask array with other block sizes are other tiles, and so get other
  digests (the digest is remembered per array identity: all three arrays count); equal
  tiles in new arrays get the same digest."""
  m = jnp.asarray(np.eye(4, dtype=bool)[None])
  sizes = ([[64, 64, 128, 128]], [[128, 128, 64, 64]])
  a, b = (bs.variable(m, r, r) for r in sizes)
  c, d = bs.from_dense(m, (64, 64)), bs.from_dense(m, (128, 128))
  assert a.block_mask is b.block_mask and c.block_mask is d.block_mask
  assert bs.layout_digest(a) != bs.layout_digest(b)
  assert bs.layout_digest(c) != bs.layout_digest(d)
  assert bs.layout_digest(a) == bs.layout_digest(bs.variable(np.eye(4, dtype=bool),
                                                             sizes[0], sizes[0]))
  assert jax.jit(lambda l: bs.layout_digest(l) is None)(c)   # traced: unknown


def test_identity_memo_keeps_objects_and_evicts_oldest():
  from jattn.memo import IdentityMemo
  memo, calls = IdentityMemo(2), []
  f = lambda x: (calls.append(x), x)[1]
  a, b, c = object(), object(), object()
  assert memo.get((a,), "k", lambda: f(1)) == 1
  assert memo.get((a,), "k", lambda: f(2)) == 1          # hit: same object, same key
  assert memo.get((a,), "other", lambda: f(3)) == 3      # the key counts
  assert memo.get((b,), "k", lambda: f(4)) == 4          # evicts (a, "k"), the oldest
  assert memo.get((a,), "k", lambda: f(5)) == 5
  assert memo.get((c,), "k", lambda: f(6)) == 6 and calls == [1, 3, 4, 5, 6]


def test_block_sparse_kernel_passes_over_small_blocks():
  from jattn.pallas import block_sparse as PB
  spec = jattn.dispatch.Spec(op="block_sparse_attention", platform="gpu", dtype=jnp.bfloat16,
                             kv_dtype=jnp.bfloat16, head_dim=128, v_head_dim=128,
                             num_q_heads=4, num_kv_heads=4, extra=(("block_size", (64, 128)),))
  assert PB.supports(spec) is None
  for block in ((32, 64), None):
    spec = dataclasses.replace(spec, extra=(("block_size", block),))
    assert "64" in PB.supports(spec)


def test_tile_lists_pair_sharing(rng):
  """The forward's lists: each q tile lists exactly its kept tiles, its pair's common
  whole tiles first (same order in both tiles of the pair), then its other whole tiles,
  then its edge (masked) tiles, each run ascending; the transposed lists share nothing."""
  from jattn.pallas import block_sparse as PB
  T, S = 320, 448                                    # 5 q tiles (padded to 6), 7 kv tiles
  blocks = rng.random((2, 5, 7)) < 0.6
  blocks[:, :2, 0] = True                            # pair 0 shares at least kv tile 0
  lay = bs.from_dense(blocks, (64, 64))
  var = V.causal()
  rows, cols = (np.asarray(x) for x in PB.tile_lists(lay, T, S, var))
  H = PB.HEADER
  assert rows.shape == (2, 6, H + 7) and cols.shape == (2, 8, H + 5)
  assert np.all(cols[:, :, 2] == 0) and np.all(rows[:, :2, 2] >= 1)
  m = np.asarray(lay.element_mask(T, S))
  m = m & (np.arange(S)[None, :] <= np.arange(T)[:, None] + (S - T))[None]   # causal
  tile = lambda h, r, c: m[h, r * 64:(r + 1) * 64, c * 64:(c + 1) * 64]
  for h in range(2):
    for r in range(6):
      n, nw, ns = rows[h, r, :H]
      ids = rows[h, r, H:H + n]
      want = [c for c in range(7) if r < 5 and tile(h, r, c).any()]
      assert sorted(ids) == want
      assert all(tile(h, r, c).all() for c in ids[:nw])
      assert not any(tile(h, r, c).all() for c in ids[nw:])
      for run in (ids[:ns], ids[ns:nw], ids[nw:]):
        assert list(run) == sorted(run)
      mate = r ^ 1
      assert rows[h, mate, 2] == ns
      np.testing.assert_array_equal(rows[h, mate, H:H + ns], ids[:ns])
      mate_whole = {c for c in range(7) if mate < 5 and tile(h, mate, c).all()}
      assert set(ids[:ns]) == set(ids[:nw]) & mate_whole
