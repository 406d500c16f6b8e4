"""Every Pallas kernel lowers for CUDA (Mosaic GPU) at awkward shapes, on a machine
without a GPU.

Interpret mode (the rest of the CPU suite) checks a kernel's math but not what only the
Mosaic GPU lowering checks: TMA shapes and tilings, layouts, shared-memory budgets. Here
each public op is traced with the dispatcher told it is on a GPU (so it picks the compiled
Pallas kernel, not the interpreter) and lowered with `lowering_platforms=("cuda",)`.
Lowering is not running: a kernel that lowers can still fault on a GPU
(`scripts/gpu_check.sh` runs the suite there). This file found merge_states failing on
row counts that are not a multiple of 8, which the interpreter accepted.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import block_sparse, dispatch, variants as V
from conftest import ON_GPU

pytestmark = pytest.mark.skipif(ON_GPU, reason="on a GPU the suite compiles the kernels")

BF = jnp.bfloat16


@pytest.fixture(autouse=True)
def on_gpu(monkeypatch):
  monkeypatch.setattr(dispatch, "current_platform", lambda: "gpu")


def lower(f, *args, op):
  """Lower `f(*args)` for CUDA and check that `op` went to a compiled Pallas kernel (a
  case the kernel declines, with its reason, is skipped)."""
  dispatch.history.clear()
  try:
    jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))
  except NotImplementedError as e:
    if "cannot serve this call" not in str(e):
      raise
    pytest.skip(str(e).splitlines()[0])
  used = {name for o, name in dispatch.history if o == op}
  assert used == {"pallas_mosaic"}, (op, list(dispatch.history))


def z(*shape, dtype=BF):
  return jnp.zeros(shape, dtype)


VARIANTS = {"plain": {}, "causal": dict(causal=True),
            "window+cap": dict(causal=True, sliding_window=(16, 0), logits_soft_cap=30.0),
            "alibi": dict(causal=True, variant=V.alibi(V.alibi_slopes(4)))}


@pytest.mark.parametrize("T,S,D,Dv,Nkv", [(37, 50, 64, 64, 2), (1, 64, 128, 128, 4),
                                          (128, 300, 256, 256, 1), (64, 64, 128, 64, 2)])
@pytest.mark.parametrize("var", list(VARIANTS))
def test_attention_forward(T, S, D, Dv, Nkv, var):
  f = functools.partial(jattn.attention, implementation="pallas", **VARIANTS[var])
  lower(f, z(2, T, 4, D), z(2, S, Nkv, D), z(2, S, Nkv, Dv), op="attention")


@pytest.mark.parametrize("T,S,D", [(37, 50, 64), (128, 128, 128)])
def test_attention_backward(T, S, D):
  def loss(q, k, v):
    return jattn.attention(q, k, v, causal=True, logits_soft_cap=20.0,
                           implementation="pallas").astype(jnp.float32).sum()
  lower(jax.grad(loss, argnums=(0, 1, 2)), z(2, T, 4, D), z(2, S, 2, D), z(2, S, 2, D),
        op="attention")


@pytest.mark.parametrize("page_size", [8, 16, 64, 128])
def test_paged_prefill(page_size):
  B, Nkv, D, pages = 3, 2, 128, 40
  cache = jattn.PagedKVCache(z(pages, page_size, Nkv, D), z(pages, page_size, Nkv, D))
  table = jnp.zeros((B, -(-300 // page_size)), jnp.int32)
  kv_lens = jnp.array([300, 17, 64], jnp.int32)
  q_offsets = jnp.array([0, 37, 40, 104], jnp.int32)
  f = functools.partial(jattn.prefill, implementation="pallas")
  lower(f, z(104, 8, D), cache, table, kv_lens, q_offsets, op="prefill")


def test_prefill_ragged():
  q_offsets = jnp.array([0, 37, 40, 104], jnp.int32)
  kv_offsets = jnp.array([0, 50, 70, 200], jnp.int32)
  f = functools.partial(jattn.prefill_ragged, sliding_window=(32, 0), implementation="pallas")
  lower(f, z(104, 8, 64), z(200, 2, 64), z(200, 2, 64), q_offsets, kv_offsets,
        op="prefill_ragged")


@pytest.mark.parametrize("page_size", [1, 8, 16, 64, 128])
@pytest.mark.parametrize("D,Dv,G", [(64, 64, 1), (128, 128, 4), (256, 256, 8), (128, 64, 4)])
def test_decode(page_size, D, Dv, G):
  B, Nkv, pages = 3, 2, 64
  cache = jattn.PagedKVCache(z(pages, page_size, Nkv, D), z(pages, page_size, Nkv, Dv))
  table = jnp.zeros((B, -(-700 // page_size)), jnp.int32)
  kv_lens = jnp.array([700, 5, 129], jnp.int32)
  lower(functools.partial(jattn.decode, implementation="pallas"), z(B, Nkv * G, D), cache,
        table, kv_lens, op="decode")


@pytest.mark.parametrize("variant", ["window+cap", "plan"])
def test_decode_float8_pages_and_plans(variant):
  B, Nkv, D, ps, pages = 3, 2, 128, 16, 64
  f8 = jnp.float8_e4m3fn
  cache = jattn.PagedKVCache(z(pages, ps, Nkv, D, dtype=f8), z(pages, ps, Nkv, D, dtype=f8),
                             jnp.ones((Nkv,), jnp.float32), jnp.ones((Nkv,), jnp.float32))
  lens = np.array([700, 5, 129], np.int32)
  table = jnp.zeros((B, 44), jnp.int32)
  if variant == "plan":
    plan = jattn.plan_decode(lens, ps, 8, Nkv, D, num_sms=132, split=True)
    f = lambda q, c, t, kl: jattn.decode(q, c, t, kl, plan=plan, implementation="pallas")
  else:
    f = functools.partial(jattn.decode, sliding_window=(64, 0), logits_soft_cap=30.0,
                          implementation="pallas")
  lower(f, z(B, 8, D), cache, table, jnp.asarray(lens), op="decode")


@pytest.mark.parametrize("shape,dtype", [((3, 37, 2, 64), BF), ((70, 128), jnp.float32),
                                         ((5, 512), BF)])
def test_merge_states(shape, dtype):
  o, lse = z(*shape, dtype=dtype), z(*shape[:-1], dtype=jnp.float32)
  lower(functools.partial(jattn.merge_states, implementation="pallas"), o, lse, o, lse,
        op="merge_states")


@pytest.mark.parametrize("B,T,H,page_size,R,Dr", [
    (2, 1, 16, 64, 512, 64), (1, 3, 128, 64, 512, 64), (3, 1, 16, 16, 512, 64),
    (2, 1, 16, 16, 64, 16)])       # R = 64: the shared-P schedule does not lower there
def test_mla_decode(B, T, H, page_size, R, Dr):
  pages = 48
  table = jnp.zeros((B, -(-1000 // page_size)), jnp.int32)
  kv_lens = jnp.array([1000, 70, 5][:B], jnp.int32)
  q_nope, q_pe = (z(B, H, R), z(B, H, Dr)) if T == 1 else (z(B, T, H, R), z(B, T, H, Dr))
  f = functools.partial(jattn.mla_decode, sm_scale=192 ** -0.5, implementation="pallas")
  lower(f, q_nope, q_pe, z(pages, page_size, R), z(pages, page_size, Dr), table, kv_lens,
        op="mla_decode")


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("T,S,heads", [(200, 300, 1), (256, 256, 4), (1, 512, 1)])
def test_block_sparse(T, S, heads, grad):
  layout = block_sparse.random_layout(heads, T, S, 64, 0.3, seed=0)

  def f(q, k, v):
    o = jattn.block_sparse_attention(q, k, v, layout, causal=True, implementation="pallas")
    return o.astype(jnp.float32).sum() if grad else o
  f = jax.grad(f, argnums=(0, 1, 2)) if grad else f
  lower(f, z(1, T, 4, 128), z(1, S, 2, 128), z(1, S, 2, 128), op="block_sparse_attention")


def test_variant_closing_over_an_array_goes_to_xla():
  """A variant that closes over an array cannot enter a kernel (Pallas captures scalars
  only): on a GPU the dispatcher passes the kernels over, with the reason, and the XLA
  implementation serves the call; forcing a kernel raises that reason."""
  doc = jnp.arange(64) // 16
  var = jattn.Variant(logits_mask=lambda ctx: doc[ctx.kv_pos] == doc[ctx.q_pos], name="doc")
  q = z(1, 64, 4, 64)
  cache = jattn.PagedKVCache(z(8, 16, 2, 64), z(8, 16, 2, 64))
  table, lens = jnp.zeros((2, 4), jnp.int32), jnp.array([64, 5], jnp.int32)
  calls = {"attention": (functools.partial(jattn.attention, variant=var), (q, q, q)),
           "decode": (functools.partial(jattn.decode, variant=var),
                      (z(2, 4, 64), cache, table, lens))}
  for op, (f, args) in calls.items():
    dispatch.history.clear()
    jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))
    assert [name for o, name in dispatch.history if o == op] == ["xla"], op
    with pytest.raises(NotImplementedError, match="closes over arrays"):
      jax.jit(functools.partial(f, implementation="pallas")).trace(*args)
