"""Every public op against the float64 oracle, under every implementation registered for
it (`impl_params`): "xla" always, "pallas" (interpret mode on CPU) once a kernel exists.
Shapes are small on purpose: the Pallas cases run interpreted on CI's two cores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import reference, variants as V
from conftest import (assert_close, assert_float8_close, assert_lse_close, impl_params, oracle,
                      paged_cache, randn)

DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32]


def kernel_dtype(impl):
  """float32 for the reference; bf16 for kernels (tensor cores take bf16/fp16), so that
  the kernel cases run instead of skipping as unsupported."""
  return jnp.float32 if impl == "xla" else jnp.bfloat16


def _variant_cases():
  """(id, api kwargs, composed variant for the oracle) triples; the oracle sees exactly
  what the API builds."""

  def rel_bias(s, ctx):  # a user-defined variant: head-dependent linear position bias
    return s - 0.05 * (ctx.head + 1).astype(s.dtype) * jnp.abs(ctx.kv_pos - ctx.q_pos).astype(s.dtype)

  def even_keys(ctx):  # a user-defined mask the kernels cannot know ahead
    return (ctx.kv_pos % 2 == 0) | (ctx.kv_pos == ctx.q_pos)

  return [
      ("plain", dict()),
      ("causal", dict(causal=True)),
      ("window", dict(causal=True, sliding_window=5)),
      ("window_lr", dict(sliding_window=(4, 3))),
      ("softcap", dict(causal=True, logits_soft_cap=2.0)),
      ("alibi", dict(causal=True, variant="alibi")),
      ("user", dict(causal=True, variant=V.Variant(logits_transform=rel_bias,
                                                   logits_mask=even_keys, name="user"))),
  ]


def _kwargs(case, nq):
  kw = dict(case)
  if kw.get("variant") == "alibi":
    kw["variant"] = V.alibi(V.alibi_slopes(nq))
  return kw


def _oracle_variant(op, kw):
  return jattn.api.build_variant(op, kw.get("causal", False), kw.get("sliding_window"),
                                 kw.get("logits_soft_cap"), kw.get("variant"))


# ------------------------------------------------------------------------ attention

@pytest.mark.parametrize("impl", impl_params("attention"))
@pytest.mark.parametrize("name,case", _variant_cases(), ids=[c[0] for c in _variant_cases()])
def test_attention_variants(impl, name, case, rng):
  B, T, S, Nq, Nkv, D = 2, 24, 40, 4, 2, 32
  dtype = jnp.bfloat16
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
             randn(rng, (B, S, Nkv, D), dtype))
  kw = _kwargs(case, Nq)
  o, lse = jattn.attention(q, k, v, return_lse=True, implementation=impl, **kw)
  var = _oracle_variant("attention", kw)
  ro, rlse = oracle(reference.attention, q, k, v, sm_scale=D ** -0.5, variant=var)
  assert o.dtype == dtype and o.shape == (B, T, Nq, D)
  assert_close(o, ro, dtype, what=f"{impl}/{name} out")
  assert_lse_close(lse, rlse, dtype)


@pytest.mark.parametrize("impl", impl_params("attention"))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", [(1, 17, 17, 8, 8, 64, 64), (2, 8, 33, 8, 1, 32, 16),
                                   (1, 33, 20, 6, 3, 128, 128)],
                         ids=["mha_d64", "mqa_dv16", "gqa_d128"])
def test_attention_dtypes_shapes(impl, dtype, shape, rng):
  B, T, S, Nq, Nkv, D, Dv = shape
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
             randn(rng, (B, S, Nkv, Dv), dtype))
  o = jattn.attention(q, k, v, causal=True, sm_scale=0.3, implementation=impl)
  ro, _ = oracle(reference.attention, q, k, v, sm_scale=0.3, variant=V.causal())
  assert_close(o, ro, dtype)


@pytest.mark.parametrize("impl", impl_params("attention"))
def test_attention_lengths_and_empty_rows(impl, rng):
  """Per-sequence lengths; rows past q_len and rows with no visible key are exactly 0."""
  B, T, S, Nq, Nkv, D = 3, 16, 24, 2, 1, 32
  dtype = kernel_dtype(impl)
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
             randn(rng, (B, S, Nkv, D), dtype))
  ql = jnp.array([16, 5, 0], jnp.int32)
  kl = jnp.array([20, 3, 7], jnp.int32)
  # window 0 with a shift: query t of sequence 1 sees nothing before position kv-q.
  o, lse = jattn.attention(q, k, v, causal=True, q_lengths=ql, kv_lengths=kl,
                           return_lse=True, implementation=impl)
  ro, rlse = oracle(reference.attention, q, k, v, sm_scale=D ** -0.5, variant=V.causal(),
                    q_lengths=ql, kv_lengths=kl)
  assert_close(o, ro, dtype)
  assert_lse_close(lse, rlse, dtype)
  o = np.asarray(o)
  assert np.all(o[1, 5:] == 0) and np.all(o[2] == 0)
  assert np.all(np.isneginf(np.asarray(lse)[2]))
  # q_len > kv_len: early rows see no key at all (q_pos < 0) and must be 0, not NaN.
  assert np.all(o[1, :2] == 0) and not np.isnan(o).any()


@pytest.mark.parametrize("impl", impl_params("attention"))
def test_attention_grad(impl, rng):
  B, T, S, Nq, Nkv, D = 1, 16, 16, 4, 2, 32
  dtype = kernel_dtype(impl)
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
             randn(rng, (B, S, Nkv, D), dtype))
  do = randn(rng, (B, T, Nq, D), dtype)
  for kw in (dict(causal=True), dict(causal=True, logits_soft_cap=3.0, sliding_window=6)):
    var = _oracle_variant("attention", kw)

    def loss(q, k, v):
      return jnp.sum(jattn.attention(q, k, v, implementation=impl, **kw) * do)

    def ref_loss(q, k, v, do):
      return jnp.sum(reference.attention(q, k, v, sm_scale=D ** -0.5, variant=var)[0] * do)

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    rgrads = oracle(jax.grad(ref_loss, argnums=(0, 1, 2)), q, k, v, do)
    for name, g, rg in zip("qkv", grads, rgrads):
      assert_close(g, rg, dtype, scale=2, what=f"d{name} {kw}")


# ------------------------------------------------------------------------ paged ops

def _lengths(rng, B, S):
  return jnp.asarray(rng.integers(1, S + 1, size=B), jnp.int32)


@pytest.mark.parametrize("impl", impl_params("decode"))
@pytest.mark.parametrize("page_size", [1, 8, 16])
@pytest.mark.parametrize("name,case", _variant_cases()[2:] + [("plain", {})],
                         ids=[c[0] for c in _variant_cases()[2:]] + ["plain"])
def test_decode(impl, page_size, name, case, rng):
  B, S, Nq, Nkv, D = 3, 40, 8, 2, 64   # 64 bf16 columns: one-row pages are 128-byte TMA copies
  dtype = jnp.bfloat16
  case = {k: v for k, v in case.items() if k != "causal"}  # decode is causal by construction
  kd, vd = randn(rng, (B, S, Nkv, D), dtype), randn(rng, (B, S, Nkv, D), dtype)
  cache, table = paged_cache(rng, kd, vd, page_size, dtype)
  q = randn(rng, (B, Nq, D), dtype)
  kv_lens = _lengths(rng, B, S)
  kw = _kwargs(case, Nq)
  o, lse = jattn.decode(q, cache, table, kv_lens, return_lse=True, implementation=impl, **kw)
  var = _oracle_variant("decode", kw)
  ro, rlse = oracle(reference.decode, q, cache, table, kv_lens, sm_scale=D ** -0.5, variant=var)
  assert_close(o, ro, dtype, what=f"decode/{impl}/{name}")
  assert_lse_close(lse, rlse, dtype)
  # The oracle itself against dense attention over the gathered prefix.
  for b in range(B):
    n = int(kv_lens[b])
    do, _ = oracle(reference.attention, q[b:b + 1, None], kd[b:b + 1, :n], vd[b:b + 1, :n],
                   sm_scale=D ** -0.5, variant=V.compose(V.causal(), var))
    np.testing.assert_allclose(ro[b], do[0, 0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", impl_params("decode"))
def test_decode_float8_pages_and_zero_length(impl, rng):
  B, S, Nq, Nkv, D = 3, 32, 4, 2, 64
  kd = randn(rng, (B, S, Nkv, D), jnp.float32, scale=3.0)
  vd = randn(rng, (B, S, Nkv, D), jnp.float32)
  scales = (jnp.array([0.02, 0.03], jnp.float32), jnp.array([0.01, 0.015], jnp.float32))
  cache, table = paged_cache(rng, kd, vd, 16, jnp.float8_e4m3fn, scales=scales)
  q = randn(rng, (B, Nq, D), jnp.bfloat16)
  kv_lens = jnp.array([32, 0, 9], jnp.int32)
  o, lse = jattn.decode(q, cache, table, kv_lens, return_lse=True, implementation=impl)
  ro, rlse = oracle(reference.decode, q, cache, table, kv_lens, sm_scale=D ** -0.5,
                    variant=V.Variant())
  assert_close(o, ro, jnp.bfloat16)
  assert np.all(np.asarray(o)[1] == 0) and np.all(np.isneginf(np.asarray(lse)[1]))
  # And against the unquantized data: float8 precision.
  dense, _ = oracle(reference.attention, q[:, None], kd, vd, sm_scale=D ** -0.5,
                    variant=V.causal(), q_lengths=jnp.ones(B, jnp.int32), kv_lengths=kv_lens)
  assert_float8_close(o, ro, dense[:, 0], jnp.bfloat16)


@pytest.mark.parametrize("impl", impl_params("decode"))
def test_decode_out_of_range_is_contained(impl, rng):
  """Lengths past the table and junk page ids read only inside the cache."""
  B, S, Nq, Nkv, D = 2, 16, 2, 1, 32
  dtype = jnp.bfloat16
  kd, vd = randn(rng, (B, S, Nkv, D), dtype), randn(rng, (B, S, Nkv, D), dtype)
  cache, table = paged_cache(rng, kd, vd, 8, dtype)
  table = table.at[1, 1].set(10_000)
  q = randn(rng, (B, Nq, D), dtype)
  kv_lens = jnp.array([1000, 16], jnp.int32)
  o = jattn.decode(q, cache, table, kv_lens, implementation=impl)
  ro, _ = oracle(reference.decode, q, cache, table, kv_lens, sm_scale=D ** -0.5,
                 variant=V.Variant())
  assert_close(o, ro, dtype)


def _packed(rng, q_lens, kv_lens):
  qo = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
  ko = jnp.asarray(np.concatenate([[0], np.cumsum(kv_lens)]), jnp.int32)
  return qo, ko


@pytest.mark.parametrize("impl", impl_params("prefill_ragged"))
@pytest.mark.parametrize("name,case", _variant_cases()[:6], ids=[c[0] for c in _variant_cases()[:6]])
def test_prefill_ragged(impl, name, case, rng):
  q_lens, kv_lens = [5, 0, 12, 7], [9, 4, 12, 20]
  Nq, Nkv, D = 4, 2, 32
  dtype = jnp.bfloat16
  qo, ko = _packed(rng, q_lens, kv_lens)
  Tq, Tk = sum(q_lens) + 3, sum(kv_lens) + 2  # trailing padding rows
  q, k, v = (randn(rng, (Tq, Nq, D), dtype), randn(rng, (Tk, Nkv, D), dtype),
             randn(rng, (Tk, Nkv, D), dtype))
  kw = _kwargs(case, Nq)
  kw.setdefault("causal", False)
  o, lse = jattn.prefill_ragged(q, k, v, qo, ko, return_lse=True, implementation=impl, **kw)
  var = _oracle_variant("prefill_ragged", kw)
  ro, rlse = oracle(reference.prefill_ragged, q, k, v, qo, ko, sm_scale=D ** -0.5, variant=var)
  assert_close(o, ro, dtype, what=f"prefill_ragged/{impl}/{name}")
  assert_lse_close(lse, rlse, dtype)
  assert np.all(np.asarray(o)[sum(q_lens):] == 0)
  # Each sequence equals dense attention on its own slice.
  for b in range(len(q_lens)):
    if q_lens[b] == 0:
      continue
    sl, kl = slice(int(qo[b]), int(qo[b + 1])), slice(int(ko[b]), int(ko[b + 1]))
    d, _ = oracle(reference.attention, q[None, sl], k[None, kl], v[None, kl],
                  sm_scale=D ** -0.5, variant=var)
    np.testing.assert_allclose(ro[sl], d[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", impl_params("prefill"))
@pytest.mark.parametrize("page_size", [4, 16])
def test_prefill_paged_append(impl, page_size, rng):
  """Append semantics: new queries are the last q_len tokens of each cached sequence."""
  q_lens, kv_lens = [3, 10, 1], [19, 10, 7]
  B, Nq, Nkv, D = 3, 4, 2, 32
  S = max(kv_lens)
  dtype = jnp.bfloat16
  kd, vd = randn(rng, (B, S, Nkv, D), dtype), randn(rng, (B, S, Nkv, D), dtype)
  cache, table = paged_cache(rng, kd, vd, page_size, dtype)
  qo = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
  q = randn(rng, (sum(q_lens) + 2, Nq, D), dtype)
  kl = jnp.asarray(kv_lens, jnp.int32)
  for kw in (dict(), dict(sliding_window=4, logits_soft_cap=5.0)):
    o = jattn.prefill(q, cache, table, kl, qo, implementation=impl, **kw)
    var = _oracle_variant("prefill", dict(causal=True, **kw))
    ro, _ = oracle(reference.prefill, q, cache, table, kl, qo, sm_scale=D ** -0.5, variant=var)
    assert_close(o, ro, dtype, what=f"prefill/{impl} {kw}")
    # Same as ragged prefill over the dense per-sequence KV.
    kflat = jnp.concatenate([kd[b, :kv_lens[b]] for b in range(B)])
    vflat = jnp.concatenate([vd[b, :kv_lens[b]] for b in range(B)])
    ko = jnp.asarray(np.concatenate([[0], np.cumsum(kv_lens)]), jnp.int32)
    rr, _ = oracle(reference.prefill_ragged, q, kflat, vflat, qo, ko, sm_scale=D ** -0.5,
                   variant=var)
    np.testing.assert_allclose(ro, rr, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------ merge, append

@pytest.mark.parametrize("impl", impl_params("merge_states"))
def test_merge_states_is_exact(impl, rng):
  """Attention over keys [0:S) equals the merge of attention over [0:s) and [s:S)."""
  B, T, S, Nq, D = 2, 6, 30, 4, 32
  dtype = jnp.float32
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nq, D), dtype),
             randn(rng, (B, S, Nq, D), dtype))
  split = 11
  oa, la = jattn.attention(q, k[:, :split], v[:, :split], return_lse=True)
  ob, lb = jattn.attention(q, k[:, split:], v[:, split:], return_lse=True)
  # Poison one state so that a row sees only the other part.
  la = la.at[0, 0].set(-jnp.inf)
  oa = oa.at[0, 0].set(0)
  o, lse = jattn.merge_states(oa, la, ob, lb, implementation=impl)
  ro, rlse = oracle(reference.merge_states, oa, la, ob, lb)
  assert_close(o, ro, dtype)
  assert_lse_close(lse, rlse, dtype)
  full, flse = oracle(reference.attention, q, k, v, sm_scale=D ** -0.5, variant=V.Variant())
  assert_close(o[1:], full[1:], dtype)
  # Both empty: 0 and -inf, never NaN.
  e, el = jattn.merge_states(oa[:1] * 0, la[:1] * 0 - jnp.inf, ob[:1] * 0,
                             lb[:1] * 0 - jnp.inf, implementation=impl)
  assert np.all(np.asarray(e) == 0) and np.all(np.isneginf(np.asarray(el)))


@pytest.mark.parametrize("impl", impl_params("append_kv"))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float8_e4m3fn], ids=["bf16", "f8"])
def test_append_kv(impl, dtype, rng):
  P, ps, Nkv, D = 12, 4, 2, 16
  B, M = 3, 3
  scales = dict(k_scale=jnp.array([0.05, 0.1]), v_scale=jnp.array([0.02, 0.04])) \
      if dtype == jnp.float8_e4m3fn else {}
  cache = jattn.PagedKVCache.create(P, ps, Nkv, D, dtype=dtype, **scales)
  poison = randn(rng, cache.k_pages.shape, jnp.float32)
  cache = cache.replace(k_pages=poison.astype(dtype), v_pages=(-poison).astype(dtype))
  table = jnp.asarray(rng.permutation(P)[:B * M].reshape(B, M), jnp.int32)
  table = table.at[2, 2].set(99)  # out-of-range page id: writes there are dropped
  batch_ids = jnp.array([0, 0, 1, -1, 2, 2, 5], jnp.int32)
  positions = jnp.array([0, 11, 3, 0, 9, 1, 0], jnp.int32)
  T = batch_ids.shape[0]
  ks = np.asarray(scales["k_scale"]) if scales else np.ones(Nkv)  # before donation
  vs = np.asarray(scales["v_scale"]) if scales else np.ones(Nkv)
  k_new, v_new = randn(rng, (T, Nkv, D), jnp.float32), randn(rng, (T, Nkv, D), jnp.float32)
  out = jax.jit(lambda c, *a: jattn.append_kv(c, *a, implementation=impl),
                donate_argnums=0)(cache, k_new, v_new, table, batch_ids, positions)
  expect_k = np.array(poison.astype(dtype).astype(jnp.float32))
  expect_v = np.array((-poison).astype(dtype).astype(jnp.float32))
  for i in range(T):
    b, p = int(batch_ids[i]), int(positions[i])
    if b < 0 or b >= B or p >= M * ps or int(table[b, p // ps]) >= P:
      continue
    page, slot = int(table[b, p // ps]), p % ps
    kq = jnp.asarray(reference.quantize(k_new[i], jnp.asarray(ks), dtype) if scales else
                     k_new[i].astype(dtype))
    vq = jnp.asarray(reference.quantize(v_new[i], jnp.asarray(vs), dtype) if scales else
                     v_new[i].astype(dtype))
    expect_k[page, slot] = np.asarray(kq.astype(jnp.float32))
    expect_v[page, slot] = np.asarray(vq.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(out.k_pages.astype(jnp.float32)), expect_k)
  np.testing.assert_array_equal(np.asarray(out.v_pages.astype(jnp.float32)), expect_v)
  if scales:  # dequantized values are within float8 precision of the input
    got = np.asarray(out.k_pages.astype(jnp.float32))[int(table[0, 0]), 0] * ks[:, None]
    np.testing.assert_allclose(got, np.asarray(k_new[0]), rtol=0.07, atol=0.05 * ks.max())


@pytest.mark.parametrize("dtype,top", [(jnp.float8_e4m3fn, 448.0), (jnp.float8_e5m2, 57344.0)],
                         ids=["e4m3", "e5m2"])
def test_float8_append_saturates_at_its_own_range(dtype, top):
  """Values past a float8 type's range are stored as its largest finite value (not NaN,
  and not another type's maximum); values inside it round to the nearest."""
  cache = jattn.PagedKVCache.create(2, 4, 1, 16, dtype=dtype)      # scales 1
  k_new = jnp.array([[[1e6] * 8 + [-1e6] * 8], [[100.0] * 16]], jnp.float32)   # [2, 1, 16]
  out = jattn.append_kv(cache, k_new, k_new, jnp.array([[0, 1]], jnp.int32),
                        jnp.array([0, 0], jnp.int32), jnp.array([0, 1], jnp.int32),
                        implementation="xla")
  got = np.asarray(out.k_pages.astype(jnp.float32))[0, :2, 0]
  np.testing.assert_array_equal(got[0], [top] * 8 + [-top] * 8)
  np.testing.assert_array_equal(got[1], np.asarray(jnp.float32(100.0).astype(dtype), np.float32))


# ------------------------------------------------------------------------ errors, jit

def test_errors_name_the_argument(rng):
  q = randn(rng, (1, 4, 3, 16), jnp.float32)
  k = randn(rng, (1, 4, 2, 16), jnp.float32)
  with pytest.raises(ValueError, match="multiple of kv heads"):
    jattn.attention(q, k, k)
  with pytest.raises(ValueError, match="q must have rank 4"):
    jattn.attention(q[0], k, k)
  with pytest.raises(ValueError, match="head_dim"):
    jattn.attention(q[:, :, :2], k[..., :8], k)
  with pytest.raises(TypeError, match="kv_lengths must be int32"):
    jattn.attention(q[:, :, :2], k, k, kv_lengths=jnp.ones(1, jnp.float32))
  with pytest.raises(TypeError, match="dtype int32 not supported"):
    jattn.attention(q.astype(jnp.int32), k, k)
  cache = jattn.PagedKVCache.create(4, 4, 2, 16, dtype=jnp.float8_e4m3fn)
  bad = cache.replace(k_scale=None)
  with pytest.raises(TypeError, match="float8 pages need"):
    jattn.decode(q[:, 0, :2], bad, jnp.zeros((1, 2), jnp.int32), jnp.ones(1, jnp.int32))
  with pytest.raises(TypeError, match="page_table must be int32"):
    jattn.decode(q[:, 0, :2], cache, jnp.zeros((1, 2), jnp.float32), jnp.ones(1, jnp.int32))
  with pytest.raises(NotImplementedError, match="no implementation named 'nope'"):
    jattn.attention(q[:, :, :2], k, k, implementation="nope")
  with pytest.raises(ValueError, match="sliding_window"):
    jattn.attention(q[:, :, :2], k, k, sliding_window="wide")


def test_decode_refuses_wrong_plans_scales_and_page_dtypes(rng):
  """What an implementation would silently get wrong is refused up front: a plan for
  another batch (a kernel would read past its unit table), scales on bf16 pages (XLA
  would apply them, the kernels would not), pages of a dtype no implementation takes."""
  q = randn(rng, (2, 4, 16), jnp.bfloat16)
  cache = jattn.PagedKVCache.create(8, 4, 2, 16)
  table, lens = jnp.zeros((2, 3), jnp.int32), jnp.array([5, 9], jnp.int32)
  with pytest.raises(TypeError, match="plan must be a jattn.DecodePlan"):
    jattn.decode(q, cache, table, lens, plan="junk")
  one = jattn.plan_decode(np.array([5], np.int32), 4, 4, 2, 16)
  with pytest.raises(ValueError, match="made for 1 sequences, the call has B = 2"):
    jattn.decode(q, cache, table, lens, plan=one)
  with pytest.raises(ValueError, match="scales apply to float8 pages only"):
    jattn.decode(q, cache.replace(k_scale=jnp.ones(2), v_scale=jnp.ones(2)), table, lens)
  ints = cache.replace(k_pages=cache.k_pages.astype(jnp.int8),
                       v_pages=cache.v_pages.astype(jnp.int8))
  with pytest.raises(TypeError, match="cache.k_pages dtype int8 not supported"):
    jattn.decode(q, ints, table, lens)


def test_python_lists_are_taken_as_int32_arrays(rng):
  """Lengths, offsets, tables and positions given as Python lists work like arrays."""
  q = randn(rng, (2, 4, 16), jnp.float32)
  cache = jattn.PagedKVCache.create(8, 4, 2, 16, dtype=jnp.float32)
  table = [[0, 1, 2], [3, 4, 5]]
  o = jattn.decode(q, cache, table, [5, 9], implementation="xla")
  ref = jattn.decode(q, cache, jnp.asarray(table, jnp.int32), jnp.array([5, 9], jnp.int32),
                     implementation="xla")
  np.testing.assert_array_equal(np.asarray(o), np.asarray(ref))
  kv = randn(rng, (8, 2, 16), jnp.float32)
  qp = q[:1].reshape(2, 2, 16)
  o = jattn.prefill_ragged(qp, kv, kv, [0, 1, 2], [0, 4, 8], implementation="xla")
  ref = jattn.prefill_ragged(qp, kv, kv, jnp.array([0, 1, 2], jnp.int32),
                             jnp.array([0, 4, 8], jnp.int32), implementation="xla")
  np.testing.assert_array_equal(np.asarray(o), np.asarray(ref))
  ids, pos = [0] * 4 + [1] * 4, list(range(4)) * 2
  out = jattn.append_kv(cache, kv, kv, table, ids, pos)
  want = jattn.append_kv(cache, kv, kv, jnp.asarray(table, jnp.int32),
                         jnp.asarray(ids, jnp.int32), jnp.asarray(pos, jnp.int32))
  np.testing.assert_array_equal(np.asarray(out.k_pages), np.asarray(want.k_pages))
  assert np.abs(np.asarray(out.k_pages)).sum() > 0     # the tokens were written


def test_host_offsets_and_window_forms(rng):
  """Offsets given on the host are checked (from 0, not decreasing, within the rows); a
  window is an int (numpy ints too) or a (left, right) pair, an int being one-sided."""
  q, kv = randn(rng, (6, 2, 16), jnp.float32), randn(rng, (8, 2, 16), jnp.float32)
  kv_off = np.array([0, 4, 8], np.int32)
  for bad in ([0, 6, 4], [1, 3, 6], [0, 3, 7]):
    with pytest.raises(ValueError, match="q_offsets must start at 0, never decrease"):
      jattn.prefill_ragged(q, kv, kv, np.array(bad, np.int32), kv_off)
  x = randn(rng, (1, 8, 2, 16), jnp.float32)
  a = jattn.attention(x, x, x, sliding_window=np.int64(3), implementation="xla")
  b = jattn.attention(x, x, x, sliding_window=(3, 0), implementation="xla")
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = jattn.attention(x, x, x, causal=True, sliding_window=[3, 2], implementation="xla")
  np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_mismatched_dtypes_and_ranks_are_refused(rng):
  o = randn(rng, (2, 3, 8), jnp.float32)
  lse = jnp.zeros((2, 3), jnp.float32)
  with pytest.raises(TypeError, match="o_a .* and o_b .* must share a dtype"):
    jattn.merge_states(o, lse, o.astype(jnp.bfloat16), lse)
  q = randn(rng, (1, 8, 2, 64), jnp.bfloat16)
  layout = jattn.block_sparse.from_dense(np.ones((1, 1), bool), (8, 8))
  with pytest.raises(TypeError, match="k .* and v .* must share a dtype"):
    jattn.block_sparse_attention(q, q, q.astype(jnp.float32), layout)
  q_nope, q_pe = randn(rng, (2, 4, 32), jnp.bfloat16), randn(rng, (2, 4, 16), jnp.bfloat16)
  ckv, kpe = jnp.zeros((4, 8, 32), jnp.bfloat16), jnp.zeros((4, 8, 16), jnp.bfloat16)
  args = (jnp.zeros((2, 2), jnp.int32), jnp.array([3, 5], jnp.int32))
  with pytest.raises(ValueError, match="must have the same rank"):
    jattn.mla_decode(q_nope, q_pe[:, None], ckv, kpe, *args, sm_scale=0.1)
  with pytest.raises(TypeError, match="q_pe .* must have q_nope's dtype"):
    jattn.mla_decode(q_nope, q_pe.astype(jnp.int32), ckv, kpe, *args, sm_scale=0.1)
  with pytest.raises(TypeError, match="ckv_cache dtype int32 not supported"):
    jattn.mla_decode(q_nope, q_pe, ckv.astype(jnp.int32), kpe, *args, sm_scale=0.1)


def test_unavailable_family_raises_with_reason(rng):
  q = randn(rng, (1, 4, 2, 16), jnp.float32)
  if jax.default_backend() != "gpu":
    with pytest.raises(NotImplementedError, match="cuda"):
      jattn.attention(q, q, q, implementation="cuda")


def test_jit_and_variant_through_jit(rng):
  B, T, Nq, D = 1, 8, 2, 16
  q = randn(rng, (B, T, Nq, D), jnp.float32)
  var = V.alibi(V.alibi_slopes(Nq))
  f = jax.jit(lambda q, var: jattn.attention(q, q, q, causal=True, variant=var))
  o = f(q, var)
  ro, _ = oracle(reference.attention, q, q, q, sm_scale=D ** -0.5,
                 variant=V.compose(V.causal(), var))
  assert_close(o, ro, jnp.float32)


def test_compose_semantics():
  a = V.sliding_window(8, 2)
  c = V.compose(V.causal(), a, V.soft_cap(3.0))
  assert c.band == (8, 0)
  assert not c.has_custom_mask
  with pytest.raises(ValueError, match="params"):
    V.compose(V.alibi(jnp.ones(2)), V.alibi(jnp.ones(2)))
  ctx = V.Context(q_pos=jnp.arange(12)[:, None], kv_pos=jnp.arange(12)[None, :],
                  head=jnp.zeros(()), batch=jnp.zeros(()))
  m = np.asarray(c.logits_mask(ctx))
  d = np.arange(12)[None, :] - np.arange(12)[:, None]
  np.testing.assert_array_equal(m, (d <= 0) & (d >= -8))


def test_append_kv_donation_updates_in_place():
  """Under jit with donation the pages alias the outputs and no copy of them is made."""
  cache = jattn.PagedKVCache.create(64, 16, 2, 32)
  f = jax.jit(lambda c, *a: jattn.append_kv(c, *a), donate_argnums=0)
  k = jnp.ones((5, 2, 32))
  hlo = f.lower(cache, k, k, jnp.zeros((2, 4), jnp.int32), jnp.zeros(5, jnp.int32),
                jnp.arange(5, dtype=jnp.int32)).compile().as_text()
  assert "input_output_alias={ {0}: (0, {}, may-alias), {1}: (1, {}, may-alias) }" in hlo
  assert "bf16[64,16,2,32]{3,2,1,0} copy(" not in hlo
