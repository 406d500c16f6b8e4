"""Kernel-specific tests of the Pallas prefill/attention kernel (jattn.pallas.prefill and
prefill_bwd), run in the Mosaic GPU interpreter on CPU (compiled on a GPU) against the
float64 oracle. Uninitialized SMEM/GMEM is poisoned with NaN, so an output tile the kernel
forgot to write, or a read of a buffer nothing wrote, fails the comparison.

Shapes straddle the kernel's tiles (128 query rows per work item, 64/128-row KV tiles),
T != S, GQA, per-sequence lengths (incl. empty sequences and q_len > kv_len), head dims,
every built-in variant and user variants, gradients against jax.grad of the oracle, and the
packed (ragged / paged) forms. The interpreter runs the persistent kernel on a 2-CTA
"machine", so every CTA walks several work items (the cross-item barrier phases and the
double-buffered Q are exercised).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import dispatch, reference, variants as V
from jattn.pallas import prefill as P
from conftest import ON_GPU, assert_close, assert_lse_close, oracle, paged_cache, randn

POISON = False if ON_GPU else P.plgpu.InterpretGPUParams(uninitialized_memory="nan")


def _dense(rng, B, T, S, Nq, Nkv, D, Dv, dtype=jnp.bfloat16):
  return (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
          randn(rng, (B, S, Nkv, Dv), dtype))


def _check(q, k, v, var, *, q_lengths=None, kv_lengths=None, sm_scale=None, config=None):
  sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
  o, lse = P.attention(q, k, v, sm_scale=sm_scale, variant=var, q_lengths=q_lengths,
                       kv_lengths=kv_lengths, interpret=POISON, config=config)
  ro, rlse = oracle(reference.attention, q, k, v, sm_scale=sm_scale, variant=var,
                    q_lengths=q_lengths, kv_lengths=kv_lengths)
  assert o.shape == ro.shape and o.dtype == q.dtype and lse.dtype == jnp.float32
  assert_close(o, ro, q.dtype)
  assert_lse_close(lse, rlse, q.dtype)
  return np.asarray(o), np.asarray(lse)


def _rel_bias(s, ctx):
  return s - 0.05 * (ctx.head + 1).astype(s.dtype) * jnp.abs(ctx.kv_pos - ctx.q_pos).astype(s.dtype)


def _every_third_key(ctx):
  return (ctx.kv_pos % 3 != 1) | (ctx.kv_pos == ctx.q_pos)


def _scale_queries(q, ctx):   # a position-dependent query_transform
  return q * (1.0 + 0.01 * ctx.q_pos.astype(q.dtype))


@pytest.mark.parametrize("T,S,causal", [(130, 70, True), (64, 300, True), (200, 136, False)],
                         ids=["T>S", "T<S", "dense"])
def test_tile_edges_gqa(T, S, causal, rng):
  q, k, v = _dense(rng, 2, T, S, 4, 2, 64, 64)
  _check(q, k, v, V.causal() if causal else V.Variant(name="dense"))


# B1 T96 S160 (one q tile, causal, full lengths): compiled with constant lengths this
# shape hung on an H100 whatever the head dims; the op now passes the lengths as data.
@pytest.mark.parametrize("D,Dv", [(32, 16), (64, 64), (64, 128), (128, 64), (256, 256)])
def test_head_dims(D, Dv, rng):
  q, k, v = _dense(rng, 1, 96, 160, 2, 1, D, Dv)
  _check(q, k, v, V.causal())


@pytest.mark.parametrize("T,alibi", [(64, False), (128, True)])
def test_one_q_tile_two_masked_kv_tiles(T, alibi, rng):
  """One q tile over S=160 with full lengths: a consumer's masked KV loop runs two tiles.
  With compile-time lengths every loop bound was a constant and such calls hung compiled
  on an H100 (scripts/prefill_shape_probe.py); the op passes the lengths as data, ahead
  of the variant's params (ALiBi's slopes) among the kernel's extra inputs."""
  q, k, v = _dense(rng, 1, T, 160, 2, 1, 64, 64)
  var = V.compose(V.causal(), V.alibi(V.alibi_slopes(2))) if alibi else V.causal()
  _check(q, k, v, var)


def test_lengths_empty_rows_and_q_longer_than_kv(rng):
  q, k, v = _dense(rng, 4, 150, 140, 2, 1, 64, 64)
  ql = jnp.array([150, 30, 0, 90], jnp.int32)
  kl = jnp.array([140, 10, 50, 0], jnp.int32)
  o, lse = _check(q, k, v, V.causal(), q_lengths=ql, kv_lengths=kl)
  assert np.all(o[1, 30:] == 0) and np.all(o[2] == 0) and np.all(o[3] == 0)
  assert np.all(o[1, :20] == 0)                    # q_pos < 0: sees no key at all
  assert np.all(np.isneginf(lse[2])) and np.all(np.isneginf(lse[3]))


@pytest.mark.parametrize("name", ["window_lr", "softcap_fp16", "alibi", "user", "qtransform"])
def test_variants(name, rng):
  dtype = jnp.float16 if name == "softcap_fp16" else jnp.bfloat16
  q, k, v = _dense(rng, 1, 140, 200, 4, 2, 64, 64, dtype)
  var = {
      "window_lr": V.sliding_window(70, 9),
      "softcap_fp16": V.compose(V.causal(), V.soft_cap(3.0)),
      "alibi": V.compose(V.causal(), V.alibi(V.alibi_slopes(4))),
      "user": V.compose(V.causal(), V.Variant(logits_transform=_rel_bias,
                                              logits_mask=_every_third_key, name="user")),
      "qtransform": V.compose(V.causal(), V.Variant(query_transform=_scale_queries)),
  }[name]
  _check(q, k, v, var)


def test_persistent_and_one_cta_per_tile_agree(rng):
  q, k, v = _dense(rng, 1, 256, 256, 2, 2, 64, 64)
  a, _ = _check(q, k, v, V.causal(), config=P.Config(persistent=True, heavy_first=False))
  b, _ = _check(q, k, v, V.causal(), config=P.Config(persistent=False))
  np.testing.assert_array_equal(a, b)


def test_persistent_with_one_q_buffer(rng):
  """Head dim 256: two Q buffers do not fit beside the ring, so a persistent CTA loads
  each item's Q into its one buffer once the last item's O has been stored from it."""
  cfg = P.Config(block_kv=64, num_stages=2, persistent=True, heavy_first=False)
  assert P.q_buffers(cfg, 256, 256) == 1 and P.q_buffers(cfg, 128, 128) == 2
  q, k, v = _dense(rng, 1, 384, 384, 2, 1, 256, 256)
  a, _ = _check(q, k, v, V.causal(), config=cfg)
  b, _ = _check(q, k, v, V.causal(), config=P.Config(block_kv=64, num_stages=2))
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["lengths_and_empty_items", "window_and_user_mask"])
def test_early_qk_matches_the_plain_step(case, rng):
  """`Config.early_qk` (each step issues the next S behind its P.V; the default at head
  dims > 128) against the plain step: the item's first S before its loop, the last step
  through the mask code, one-step and empty items, rows that see nothing. O is bitwise
  the same; lse may differ in its last bit compiled (the epilogue's code differs, so ptxas
  may contract m * ln2 + log(l) differently: measured 4.8e-7 on an H200)."""
  kw = {}
  if case == "lengths_and_empty_items":
    q, k, v = _dense(rng, 4, 150, 140, 2, 1, 64, 64)
    var = V.causal()
    kw = dict(q_lengths=jnp.array([150, 30, 0, 90], jnp.int32),
              kv_lengths=jnp.array([140, 10, 50, 0], jnp.int32))
  else:
    q, k, v = _dense(rng, 1, 140, 330, 2, 2, 64, 32)
    var = V.compose(V.sliding_window(200, 9),
                    V.Variant(logits_mask=_every_third_key, name="every_third"))
  cfg = lambda early: P.Config(block_kv=64, persistent=True, heavy_first=False,
                               early_qk=early)
  a, la = _check(q, k, v, var, config=cfg(True), **kw)
  b, lb = _check(q, k, v, var, config=cfg(False), **kw)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(la, lb, rtol=1e-6, atol=0)


def test_early_qk_default_is_the_dense_op_at_wide_heads(rng, monkeypatch):
  """Unset, `early_qk` is on for the dense op at head dims > 128 only (where it was
  measured faster); a tuned config, which sets only the fields it searched, gets the same."""
  seen, plain = [], P.resolve

  def record(cfg, dense_op, d, dv):
    seen.append((dense_op, plain(cfg, dense_op, d, dv).early_qk))
    raise StopIteration

  monkeypatch.setattr(P, "resolve", record)
  for D, Dv in ((256, 256), (128, 256), (128, 128), (64, 64)):
    q, k, v = _dense(rng, 1, 64, 64, 1, 1, D, Dv)
    with pytest.raises(StopIteration):
      P.attention(q, k, v, sm_scale=1.0, variant=V.causal(), q_lengths=None,
                  kv_lengths=None, interpret=POISON, config=P.Config(block_kv=64))
  assert seen == [(True, True), (True, True), (True, False), (True, False)]
  assert not plain(P.Config(block_kv=64), False, 256, 256).early_qk   # packed, sparse
  assert P.default_config(256, 256, op="prefill").early_qk is None


def _rising_logits(s, ctx):   # every 64-key tile's max ~19 above the last (27 in log2)
  return s + 0.3 * ctx.kv_pos.astype(s.dtype)


@pytest.mark.parametrize("case", ["rising_keys", "rising_transform", "lengths"])
def test_lazy_rescale_when_the_max_jumps(case, rng):
  """`Config.lazy_rescale` keeps a row's max until the tile's exceeds it by more than
  RESCALE_SLACK: rows whose max jumps every tile (keys that grow along the sequence, or a
  logits_transform that adds a rising bias) rescale every step, random rows almost
  never; both against the oracle, and against the eager rescale."""
  q, k, v = _dense(rng, 2, 200, 260, 2, 1, 64, 128)
  var, kw = V.causal(), {}
  if case == "rising_keys":   # head-sized growth: the max moves by ~30 (log2) a tile
    q = (q.astype(jnp.float32) * 3).astype(q.dtype)
    k = (k.astype(jnp.float32) * (1 + 4 * (jnp.arange(260) // 64))[None, :, None, None]
         ).astype(k.dtype)
  elif case == "rising_transform":
    var = V.compose(V.causal(), V.Variant(logits_transform=_rising_logits, name="rising"))
  else:
    kw = dict(q_lengths=jnp.array([200, 37], jnp.int32),
              kv_lengths=jnp.array([260, 100], jnp.int32))
  cfg = lambda lazy: P.Config(block_kv=64, persistent=True, heavy_first=False,
                              lazy_rescale=lazy)
  a, la = _check(q, k, v, var, config=cfg(True), **kw)
  b, lb = _check(q, k, v, var, config=cfg(False), **kw)
  assert_close(a, b, q.dtype)
  np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)


def test_lazy_rescale_and_pinned_softmax_defaults():
  """Unset, lazy rescaling is on at Dv > 64 and the pinned softmax with 256-key tiles
  (where each was measured faster); set values are kept."""
  r = lambda cfg, dv: P.resolve(cfg, True, dv, dv)
  assert r(P.Config(), 128).lazy_rescale and r(P.Config(block_kv=64), 256).lazy_rescale
  assert not r(P.Config(block_kv=256), 64).lazy_rescale
  assert r(P.Config(block_kv=256), 64).pin_softmax and not r(P.Config(), 128).pin_softmax
  kept = r(P.Config(lazy_rescale=False, pin_softmax=True), 128)
  assert (kept.lazy_rescale, kept.pin_softmax) == (False, True)
  assert P.default_config(128, 128).lazy_rescale is None


@pytest.mark.parametrize("name", ["causal_lens_softcap", "window_alibi_dv", "d128_gqa"])
def test_gradients_match_reference(name, rng):
  if name == "causal_lens_softcap":
    B, T, S, Nq, Nkv, D, Dv = 2, 100, 160, 2, 1, 64, 64
    var = V.compose(V.causal(), V.soft_cap(3.0))
    ql, kl = jnp.array([100, 37], jnp.int32), jnp.array([160, 80], jnp.int32)
  elif name == "d128_gqa":
    B, T, S, Nq, Nkv, D, Dv = 2, 130, 200, 4, 2, 128, 128
    var = V.compose(V.causal(), V.soft_cap(3.0))
    ql, kl = jnp.array([130, 37], jnp.int32), jnp.array([200, 80], jnp.int32)
  else:
    B, T, S, Nq, Nkv, D, Dv = 1, 130, 130, 2, 1, 64, 32
    var = V.compose(V.sliding_window(30, 5), V.alibi(V.alibi_slopes(2)))
    ql = kl = None
  q, k, v = _dense(rng, B, T, S, Nq, Nkv, D, Dv)
  do = randn(rng, (B, T, Nq, Dv), jnp.float32)
  dl = randn(rng, (B, T, Nq), jnp.float32)

  def loss(fn):
    def f(q, k, v):
      o, lse = fn(q, k, v)
      return (jnp.sum(o.astype(jnp.float32) * do)
              + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) * dl))
    return f

  ours = loss(lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=var,
                                          q_lengths=ql, kv_lengths=kl, interpret=POISON))
  ref = loss(lambda q, k, v: reference.attention(q, k, v, sm_scale=D ** -0.5, variant=var,
                                                 q_lengths=ql, kv_lengths=kl))
  g = jax.grad(ours, argnums=(0, 1, 2))(q, k, v)
  rg = oracle(jax.grad(ref, argnums=(0, 1, 2)), q, k, v)
  for x, r, n in zip(g, rg, "qkv"):
    assert x.dtype == q.dtype
    assert_close(x, r, q.dtype, scale=2.0, what=f"d{n}")


@pytest.mark.parametrize("page_size", [8, 256])
def test_paged_append_pages_smaller_and_larger_than_tile(page_size, rng):
  q_lens, kv_lens = [3, 70, 1], [19, 200, 7]
  B, Nq, Nkv, D = 3, 2, 1, 64
  kd, vd = _dense(rng, B, max(kv_lens), max(kv_lens), Nkv, Nkv, D, D)[1:]
  cache, table = paged_cache(rng, kd, vd, page_size, jnp.bfloat16)
  qo = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
  q = randn(rng, (sum(q_lens) + 2, Nq, D), jnp.bfloat16)
  kl = jnp.asarray(kv_lens, jnp.int32)
  var = V.compose(V.causal(), V.sliding_window(100))
  o, lse = P.prefill(q, cache, table, kl, qo, sm_scale=D ** -0.5, variant=var,
                     interpret=POISON)
  ro, rlse = oracle(reference.prefill, q, cache, table, kl, qo, sm_scale=D ** -0.5,
                    variant=var)
  assert_close(o, ro, jnp.bfloat16)
  assert_lse_close(lse, rlse, jnp.bfloat16)
  assert np.all(np.asarray(o)[sum(q_lens):] == 0)


def test_ragged_long_and_empty_sequences(rng):
  q_lens, kv_lens = [5, 0, 140, 7], [9, 4, 150, 20]
  Nq, Nkv, D = 2, 1, 64
  qo = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
  ko = jnp.asarray(np.concatenate([[0], np.cumsum(kv_lens)]), jnp.int32)
  q = randn(rng, (sum(q_lens) + 3, Nq, D), jnp.bfloat16)
  k = randn(rng, (sum(kv_lens) + 2, Nkv, D), jnp.bfloat16)
  v = randn(rng, (sum(kv_lens) + 2, Nkv, D), jnp.bfloat16)
  var = V.causal()
  o, lse = P.prefill_ragged(q, k, v, qo, ko, sm_scale=D ** -0.5, variant=var,
                            interpret=POISON)
  ro, rlse = oracle(reference.prefill_ragged, q, k, v, qo, ko, sm_scale=D ** -0.5,
                    variant=var)
  assert_close(o, ro, jnp.bfloat16)
  assert_lse_close(lse, rlse, jnp.bfloat16)


def test_supports_names_what_it_cannot_do():
  def spec(**kw):
    base = dict(op="attention", platform="gpu", dtype=jnp.bfloat16, kv_dtype=jnp.bfloat16,
                head_dim=128, v_head_dim=128, num_q_heads=8, num_kv_heads=2,
                variant=V.causal())
    base.update(kw)
    return dispatch.Spec(**base)

  assert P.supports(spec()) is None
  assert "float32" in P.supports(spec(dtype=jnp.float32, kv_dtype=jnp.float32))
  assert "head_dim 40" in P.supports(spec(head_dim=40))
  assert "page_size 4" in P.supports(spec(op="prefill", page_size=4))
  assert P.supports(spec(op="prefill", page_size=16)) is None
  # The paged op keeps 128-key tiles at head dim 64 (the dense op takes 256): a page of
  # 384 tokens tiles them.
  assert P.supports(spec(op="prefill", page_size=384, head_dim=64, v_head_dim=64)) is None
  assert "decode" in P.supports(spec(op="decode"))


def test_head_dim_64_tiles_follow_the_visible_keys():
  """256-key tiles at head dim <= 64 for the dense op unless the band leaves rows at most
  2048 keys (where the diagonal tile's masked half costs more than it saves)."""
  bkv = lambda *a, **kw: P.default_config(*a, **kw).block_kv
  assert bkv(64, 64) == 256
  assert bkv(64, 64, kv_len=1024) == 256                        # no band: no masked tiles
  assert bkv(64, 64, kv_len=2049, band=(None, 0)) == 256
  assert bkv(64, 64, kv_len=2048, band=(None, 0)) == 128
  assert bkv(64, 64, kv_len=8192, band=(1023, 0)) == 128        # a 1024-key window
  assert bkv(64, 64, kv_len=8192, band=(None, 0), op="prefill") == 128
  assert bkv(128, 128, kv_len=8192) == 128


def test_compiled_ring_depth_is_bounded_by_the_hardware_barriers():
  q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
  f = lambda q, k, v: P.attention(q, k, v, sm_scale=0.125, variant=V.Variant(), q_lengths=None,
                                  kv_lengths=None, config=P.Config(num_stages=5))
  with pytest.raises(ValueError, match="at most 4"):
    jax.eval_shape(f, q, q, q)


def test_named_turn_barriers_model():
  """The consumers' turn on hardware named barriers (compiled kernels only; the CPU
  suite interprets the mbarrier form), checked on a model: each consumer's sequence of
  turns as the kernel issues them (`Signals.parities`: wg 1's rendezvous at an item's
  start, two turns a step, wg 0's rendezvous at its end), run under random interleavings
  with `bar.arrive` / `bar.sync` counting: no barrier ever completes without its syncing
  warpgroup (an arrival running a phase ahead), none deadlocks, and the n-th wait of each
  consumer is released by the other's n-th arrival, as with the mbarrier."""
  base = P.NAMED_BARRIER_BASE

  def program(wg, steps):
    ops, n = [], 0
    for k, s in enumerate(steps):
      item, first = P.Signals.parities(k, wg)
      turns = ([item] if wg == 1 else []) + [first, 1 - first] * s + ([item] if wg == 0 else [])
      for parity in turns:
        n += 1
        ops += [("arrive", base + 2 * (1 - wg) + parity, n), ("sync", base + 2 * wg + parity, n)]
    return ops

  rng = np.random.default_rng(0)
  for _ in range(300):
    steps = rng.integers(0, 4, size=rng.integers(1, 6))
    progs, pc = [program(0, steps), program(1, steps)], [0, 0]
    count = {}          # barrier -> (arrivals so far in this phase, [arrival numbers])
    waiting = {}        # wg -> (barrier, turn number) it is blocked in
    while pc != [len(p) for p in progs]:
      ready = [w for w in (0, 1) if pc[w] < len(progs[w]) and w not in waiting]
      assert ready, "deadlock"
      w = int(rng.choice(ready))
      op, bar, n = progs[w][pc[w]]
      pc[w] += 1
      got, arrivals = count.get(bar, (0, []))
      got += 128
      if op == "arrive":
        arrivals = arrivals + [n]
      else:
        waiting[w] = (bar, n)
      assert got <= 256
      if got == 256:   # the phase completes: it must be one sync meeting one arrival
        syncs = [x for x, (b, _) in waiting.items() if b == bar]
        assert len(arrivals) == 1 and len(syncs) == 1, "an arrival ran a phase ahead"
        assert waiting.pop(syncs[0])[1] == arrivals[0], "a wait met the wrong arrival"
        got, arrivals = 0, []
      count[bar] = (got, arrivals)
    assert not waiting and all(g == 0 for g, _ in count.values())


@pytest.mark.skipif(ON_GPU, reason="checks the CPU dispatch")
def test_public_api_runs_the_kernel_interpreted(rng):
  q, k, v = _dense(rng, 1, 40, 40, 2, 1, 64, 64)
  o = jattn.attention(q, k, v, causal=True, implementation="pallas")
  assert dispatch.chosen("attention") == "pallas_mosaic (interpret)"
  ro, _ = oracle(reference.attention, q, k, v, sm_scale=64 ** -0.5, variant=V.causal())
  assert_close(o, ro, jnp.bfloat16)

