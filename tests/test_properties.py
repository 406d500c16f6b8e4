"""Property tests: hypothesis draws shapes, lengths and windows that hand-written cases
miss (tile edges, q_len > kv_len, empty sequences, windows wider than the sequence)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import jattn
from jattn import reference, variants as V
from conftest import ON_GPU, assert_close, assert_lse_close, impl_params, impls, oracle, randn

EXAMPLES = {"xla": 12, "pallas": 6, "cuda": 6}


@st.composite
def attention_case(draw, max_len=40, head_dims=(16, 32), groups=(1, 3), other_dv=None):
  """(B, T, S, Nkv, G, D, Dv, causal, window, cap, q_len, kv_len, seed); Dv is D, or
  `other_dv` half the time when given."""
  B = draw(st.integers(1, 2))
  T = draw(st.integers(1, max_len))
  S = draw(st.integers(1, max_len))
  Nkv = draw(st.sampled_from([1, 2]))
  G = draw(st.sampled_from(groups))
  D = draw(st.sampled_from(head_dims))
  Dv = D if other_dv is None else draw(st.sampled_from([D, other_dv]))
  causal = draw(st.booleans())
  window = draw(st.one_of(st.none(), st.integers(0, max_len + 5),
                          st.tuples(st.integers(0, 20), st.integers(0, 20))))
  cap = draw(st.one_of(st.none(), st.floats(0.5, 30)))
  lengths = draw(st.booleans())
  q_len = draw(st.lists(st.integers(0, T), min_size=B, max_size=B)) if lengths else None
  kv_len = draw(st.lists(st.integers(0, S), min_size=B, max_size=B)) if lengths else None
  seed = draw(st.integers(0, 2**31 - 1))
  return B, T, S, Nkv, G, D, Dv, causal, window, cap, q_len, kv_len, seed


def _check_case(case, impl, dtype):
  """jattn.attention(implementation=impl) on the drawn case vs the float64 oracle."""
  B, T, S, Nkv, G, D, Dv, causal, window, cap, q_len, kv_len, seed = case
  rng = np.random.default_rng(seed)
  Nq = Nkv * G
  q, k, v = (randn(rng, (B, T, Nq, D), dtype), randn(rng, (B, S, Nkv, D), dtype),
             randn(rng, (B, S, Nkv, Dv), dtype))
  ql = None if q_len is None else jnp.asarray(q_len, jnp.int32)
  kl = None if kv_len is None else jnp.asarray(kv_len, jnp.int32)
  kw = dict(causal=causal, sliding_window=window, logits_soft_cap=cap)
  o, lse = jattn.attention(q, k, v, q_lengths=ql, kv_lengths=kl, return_lse=True,
                           implementation=impl, **kw)
  var = jattn.api.build_variant("attention", causal, window, cap)
  ro, rlse = oracle(reference.attention, q, k, v, sm_scale=D ** -0.5, variant=var,
                    q_lengths=ql, kv_lengths=kl)
  assert_close(o, ro, dtype, what=str(case))
  assert_lse_close(lse, rlse, dtype, what=f"lse {case}")


@pytest.mark.parametrize("impl", impl_params("attention"))
def test_attention_property(impl):
  @settings(max_examples=EXAMPLES[impl], deadline=None, derandomize=False,
            suppress_health_check=list(HealthCheck))
  @given(attention_case())
  def check(case):
    _check_case(case, impl, jnp.float32 if impl == "xla" else jnp.bfloat16)

  check()


@pytest.mark.skipif("pallas" not in impls("attention"), reason="no Pallas attention kernel here")
def test_attention_property_kernel_tiles():
  """Shapes across the Pallas kernel's tiles (128-row q items, 64/128-key KV tiles) and
  head dims: compiled, one-q-tile causal shapes with constant lengths hung on an H100
  (session 4), and the cases above never reach a second tile. Compiled on a GPU each
  example is a second; interpreted on CPU, tens of seconds."""
  @settings(max_examples=10 if ON_GPU else 2, deadline=None, derandomize=False,
            suppress_health_check=list(HealthCheck))
  @given(attention_case(max_len=300, head_dims=(64, 128), groups=(1, 2), other_dv=64))
  def check(case):
    _check_case(case, "pallas", jnp.bfloat16)

  check()


# ------------------------------------------------------------ an oracle from the definitions

def _attention_by_definition(q, k, v, *, causal=False, window=None, cap=None, slopes=None):
  """Attention written from the variants' documented definitions, in float64 numpy, one
  (query, head) at a time, independent of jattn.reference (which is both the "xla"
  implementation and the tests' oracle). q [T,H,D], k/v [S,Hkv,D|Dv]; the query t sits
  at position S - T + t (bottom-right); soft-cap applies before ALiBi (keyword order)."""
  T, H, D = q.shape
  S, Hkv, Dv = v.shape
  o, lse = np.zeros((T, H, Dv)), np.full((T, H), -np.inf)
  pos = np.arange(S)
  for h in range(H):
    kh, vh = k[:, h // (H // Hkv)], v[:, h // (H // Hkv)]
    for t in range(T):
      qp = S - T + t
      s = kh @ q[t, h] / np.sqrt(D)
      if cap is not None:
        s = cap * np.tanh(s / cap)
      if slopes is not None:
        s = s + slopes[h] * (pos - qp)
      keep = np.ones(S, bool)
      if causal:
        keep &= pos <= qp
      if window is not None:
        keep &= (pos >= qp - window[0]) & (pos <= qp + window[1])
      if keep.any():
        m = s[keep].max()
        w = np.exp(s[keep] - m)
        o[t, h] = w @ vh[keep] / w.sum()
        lse[t, h] = m + np.log(w.sum())
  return o, lse


@pytest.mark.parametrize("kw", [
    dict(causal=True), dict(window=(3, 2)), dict(causal=True, window=(4, 0)),
    dict(causal=True, cap=2.0), dict(slopes=True), dict(causal=True, cap=3.0, slopes=True)],
    ids=["causal", "window3_2", "causal_window4", "causal_softcap", "alibi",
         "causal_softcap_alibi"])
def test_xla_matches_the_variant_definitions(kw):
  """The "xla" implementation (and so the oracle every kernel is tested against) equals
  the definitions written out in numpy, for dense attention with T < S and for decode."""
  rng = np.random.default_rng(0)
  T, S, H, Hkv, D = 5, 9, 4, 2, 16
  q, k, v = (rng.standard_normal(s) * 2 for s in ((T, H, D), (S, Hkv, D), (S, Hkv, D)))
  slopes = np.asarray(V.alibi_slopes(H), np.float64) if kw.get("slopes") else None
  want, want_lse = _attention_by_definition(q, k, v, causal=kw.get("causal", False),
                                            window=kw.get("window"), cap=kw.get("cap"),
                                            slopes=slopes)
  args = dict(causal=kw.get("causal", False), sliding_window=kw.get("window"),
              logits_soft_cap=kw.get("cap"),
              variant=V.alibi(V.alibi_slopes(H)) if slopes is not None else None)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  o, lse = jattn.attention(f32(q)[None], f32(k)[None], f32(v)[None], return_lse=True,
                           implementation="xla", **args)
  np.testing.assert_allclose(np.asarray(o[0]), want, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(np.asarray(lse[0]), want_lse, rtol=2e-5, atol=2e-5)
  if kw.get("causal"):   # decode: the last query of each of two sequences, lengths 9 and 6
    cache = jattn.PagedKVCache(f32(np.stack([k, k])).reshape(6, 3, Hkv, D),
                               f32(np.stack([v, v])).reshape(6, 3, Hkv, D))
    table = jnp.array([[0, 1, 2], [3, 4, 5]], jnp.int32)
    del args["causal"]
    od = jattn.decode(f32(np.stack([q[-1], q[-1]])), cache, table,
                      jnp.array([9, 6], jnp.int32), implementation="xla", **args)
    w6, _ = _attention_by_definition(q[-1:], k[:6], v[:6], causal=True, window=kw.get("window"),
                                     cap=kw.get("cap"), slopes=slopes)
    np.testing.assert_allclose(np.asarray(od[0]), want[-1], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(od[1]), w6[0], rtol=2e-5, atol=2e-5)
