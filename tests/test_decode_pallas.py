"""The Pallas paged decode kernel (`jattn/pallas/decode.py`) and merge_states kernel
(`jattn/pallas/merge.py`) on cases the shared suite does not reach: page sizes 1/16/64,
head dims 64/128/256 and Dv != D, float8 pages, composed and user variants with query and
key transforms, plans with split and unsplit sequences, lse. On CPU the kernels run in
interpret mode with uninitialized memory poisoned to NaN, so an unwritten output shows.
Shapes are small: every case is a few seconds interpreted."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

import jattn
from jattn import dispatch, reference, variants as V
from jattn.pallas import decode as pd
from conftest import ON_GPU, assert_close, assert_lse_close, oracle, paged_cache, randn


@pytest.fixture(autouse=True)
def poisoned():
  ctx = (contextlib.nullcontext() if ON_GPU else plgpu.force_gpu_interpret_mode(
      plgpu.InterpretGPUParams(uninitialized_memory="nan")))
  with ctx:
    yield


def _case(rng, *, B=2, S=150, Nq=4, Nkv=2, D=64, Dv=None, ps=16, dtype=jnp.bfloat16,
          kv_dtype=None, lens=None):
  Dv = Dv or D
  kv_dtype = kv_dtype or dtype
  kd = randn(rng, (B, S, Nkv, D), jnp.float32)
  vd = randn(rng, (B, S, Nkv, Dv), jnp.float32)
  scales = None
  if jattn.cache.is_float8(kv_dtype):
    scales = (jnp.asarray(rng.uniform(0.005, 0.01, Nkv), jnp.float32),
              jnp.asarray(rng.uniform(0.005, 0.01, Nkv), jnp.float32))
  cache, table = paged_cache(rng, kd, vd, ps, kv_dtype, scales=scales)
  q = randn(rng, (B, Nq, D), dtype)
  lens = rng.integers(1, S + 1, B) if lens is None else lens
  return q, cache, table, jnp.asarray(lens, jnp.int32)


def _check(q, cache, table, lens, *, plan=None, variant=None, **kw):
  o, lse = jattn.decode(q, cache, table, lens, return_lse=True, plan=plan,
                        variant=variant, implementation="pallas_mosaic", **kw)
  var = jattn.api.build_variant("decode", False, kw.get("sliding_window"),
                                kw.get("logits_soft_cap"), variant)
  ro, rlse = oracle(reference.decode, q, cache, table, lens, sm_scale=q.shape[-1] ** -0.5,
                    variant=var)
  dtype = q.dtype
  scale = 2 if var.query_transform or var.key_transform else 1  # transformed q/k round
  assert_close(o, ro, dtype, scale=scale, what="decode")
  assert_lse_close(lse, rlse, dtype)
  return np.asarray(o), np.asarray(lse)


@pytest.mark.parametrize("ps,D,Dv", [(1, 64, 64), (16, 128, 64), (64, 256, 256)],
                         ids=["p1_d64", "p16_d128_dv64", "p64_d256"])
def test_page_sizes_and_head_dims(ps, D, Dv, rng):
  _check(*_case(rng, ps=ps, D=D, Dv=Dv, S=70 if ps == 1 else 150))


def test_float8_pages_and_empty_row(rng):
  q, cache, table, lens = _case(rng, B=3, kv_dtype=jnp.float8_e4m3fn, lens=[150, 0, 37])
  o, lse = _check(q, cache, table, lens)
  assert np.all(o[1] == 0) and np.all(np.isneginf(lse[1]))


def _user_variants():
  def rel_bias(s, ctx):
    return s - 0.05 * (ctx.head + 1).astype(s.dtype) * jnp.abs(ctx.kv_pos - ctx.q_pos).astype(s.dtype)

  def thin_keys(ctx):
    return (ctx.kv_pos % 3 != 1) | (ctx.kv_pos == ctx.q_pos)

  def scale_q(q, ctx):   # per-head query scaling: a query transform reading ctx.head
    return q * (1.0 + 0.1 * ctx.head.astype(q.dtype))

  def rope_like(k, ctx):  # position-dependent key transform
    return k * jnp.cos(0.01 * ctx.kv_pos.astype(k.dtype))

  return [
      ("softcap_alibi", dict(logits_soft_cap=5.0, variant=V.alibi(V.alibi_slopes(4)))),
      ("window", dict(sliding_window=40)),
      ("user_bias_mask", dict(variant=V.Variant(logits_transform=rel_bias,
                                                logits_mask=thin_keys, name="user"))),
      ("qk_transforms", dict(variant=V.Variant(query_transform=scale_q,
                                               key_transform=rope_like, name="qk"))),
  ]


@pytest.mark.parametrize("name,kw", _user_variants(), ids=[v[0] for v in _user_variants()])
def test_variants(name, kw, rng):
  _check(*_case(rng, S=200, lens=[200, 150]), **kw)


def test_plan_splits_skewed_lengths(rng):
  """Host plan with many units per long sequence: partials merged exactly."""
  q, cache, table, lens = _case(rng, B=3, S=700, ps=64, lens=[700, 5, 0])
  plan = jattn.plan_decode(np.asarray(lens), 64, 4, 2, 64, num_sms=1, waves=8,
                           min_unit_keys=64)
  assert plan.split and int(plan.batch_units[1]) >= 4   # the long sequence is split
  o, lse = _check(q, cache, table, lens, plan=plan)
  assert np.all(o[2] == 0) and np.all(np.isneginf(lse[2]))


def test_plan_unsplit_writes_output_directly(rng):
  """split=False: the kernel writes o and lse itself (no merge); G = 3 heads per kv head."""
  q, cache, table, lens = _case(rng, B=2, Nq=6, Nkv=2, S=300, lens=[300, 0])
  plan = jattn.plan_decode(np.asarray(lens), 16, 6, 2, 64, num_sms=1, split=False)
  assert not plan.split
  _check(q, cache, table, lens, plan=plan)


@pytest.mark.parametrize("kv_dtype,q_first", [(jnp.bfloat16, True), (jnp.float8_e4m3fn, False)],
                         ids=["bf16_q_first", "fp8_q_during_loads"])
def test_q_staging_order(kv_dtype, q_first, rng):
  """Both orders of staging Q (before the ring, or while its first tiles load), each on
  the dtype whose default is the other one; with ALiBi's per-head params and a split
  plan, so partials and the merge run too."""
  q, cache, table, lens = _case(rng, B=2, S=300, kv_dtype=kv_dtype, lens=[300, 120])
  var = V.alibi(V.alibi_slopes(4))
  plan = jattn.plan_decode(np.asarray(lens), 16, 4, 2, 64, num_sms=1, waves=2,
                           min_unit_keys=64, split=True)
  assert int(plan.batch_units[1]) >= 2
  o, lse = pd.decode(q, cache, table, lens, sm_scale=64 ** -0.5, variant=var, plan=plan,
                     interpret=not ON_GPU, config=pd.DecodeConfig(q_first=q_first))
  ro, rlse = oracle(reference.decode, q, cache, table, lens, sm_scale=64 ** -0.5,
                    variant=var)
  assert_close(o, ro, q.dtype, what="decode")
  assert_lse_close(lse, rlse, q.dtype)


def test_plan_on_host_equals_plan_under_jit():
  lens = np.array([2048] * 31 + [32768, 0, 17], np.int32)
  host = jattn.plan_decode(lens, 16, 32, 8, 128, num_sms=132, split=True)
  dev = jax.jit(lambda l: jattn.plan_decode(l, 16, 32, 8, 128, num_sms=132))(lens)
  np.testing.assert_array_equal(host.units, dev.units)
  np.testing.assert_array_equal(host.batch_units, dev.batch_units)
  units = np.asarray(host.units)[:int(host.batch_units[-1])]
  tiles = -(-lens // 64)
  for b in range(len(lens)):     # units tile every sequence exactly, in order
    mine = units[units[:, 0] == b]
    assert mine[0, 1] == 0 and mine[-1, 2] == tiles[b]
    assert np.all(mine[1:, 1] == mine[:-1, 2])
  # About equal work: the 32k sequence is cut into as many units as its length needs.
  sizes = units[:, 2] - units[:, 1]
  long_units = units[units[:, 0] == 31]
  assert len(long_units) * sizes.max() >= tiles[31] and len(long_units) >= 40
  assert sizes.max() - (long_units[:, 2] - long_units[:, 1]).min() <= 1
  # Under jit the real units' CTAs come first (kv-head-major), every (unit, head) once.
  work = np.asarray(dev.work)
  n, H = int(dev.batch_units[-1]), 8
  assert np.all(work[:n * H, 0] >= 0) and np.all(work[n * H:, 0] == -1)
  np.testing.assert_array_equal(work[:n * H, 4], np.repeat(np.arange(H), n))
  assert len({(r, h) for r, h in work[:, 3:5]}) == len(work) == dev.max_units * H
  np.testing.assert_array_equal(work[:, :3], np.asarray(dev.units)[work[:, 3]])
  # A uniform batch that fills the GPU is not split at all.
  assert not jattn.plan_decode(np.full(32, 4096, np.int32), 16, 32, 8, 128,
                               num_sms=132).split


def test_plan_chooses_its_waves():
  """`waves=None` on the host: one wave where its units fill whole rounds (B2 S32768,
  8 kv heads: 256 CTAs on 264 slots), four where one wave would spill a few CTAs into a
  second round (B1 S32768 with 32 kv heads: 9 units x 32 = 288 CTAs); under jit, where the
  CTAs are not sorted longest first, always four. The unit slots are sized for four
  waves either way, so the plan's shapes do not depend on the choice."""
  def plan(lens, H, **kw):
    return jattn.plan_decode(lens, 16, 32, H, 128, num_sms=132, **kw)

  def unit_tiles(p):
    u = np.asarray(p.units)[:int(p.batch_units[-1])]
    return sorted((u[:, 2] - u[:, 1]).tolist())

  two = np.full(2, 32768, np.int32)
  assert unit_tiles(plan(two, 8)) == unit_tiles(plan(two, 8, waves=1)) == [32] * 32
  one_mha = np.full(1, 32768, np.int32)
  assert unit_tiles(plan(one_mha, 32)) == unit_tiles(plan(one_mha, 32, waves=4))
  assert len(unit_tiles(plan(one_mha, 32, waves=1))) == 9
  assert plan(two, 8).max_units == plan(two, 8, waves=4).max_units
  dev = jax.jit(lambda l: plan(l, 8))(two)
  np.testing.assert_array_equal(dev.units, plan(two, 8, waves=4).units)


def test_merge_states_kernel(rng):
  shape = (3, 37, 2, 64)   # 222 rows: the last 64-row tile runs past the end
  oa, ob = randn(rng, shape, jnp.bfloat16), randn(rng, shape, jnp.bfloat16)
  la, lb = randn(rng, shape[:-1], jnp.float32, 3.0), randn(rng, shape[:-1], jnp.float32, 3.0)
  la = la.at[0].set(-jnp.inf)
  lb = lb.at[0, 0].set(-jnp.inf)
  o, lse = jattn.merge_states(oa, la, ob, lb, implementation="pallas_mosaic")
  ro, rlse = oracle(reference.merge_states, oa, la, ob, lb)
  assert_close(o, ro, jnp.bfloat16)
  assert_lse_close(lse, rlse, jnp.bfloat16)
  assert np.all(np.asarray(o)[0, 0] == 0)


def test_supports_reasons():
  spec = dispatch.Spec(op="decode", platform="gpu", dtype=jnp.bfloat16,
                       kv_dtype=jnp.bfloat16, head_dim=128, v_head_dim=128, num_q_heads=32,
                       num_kv_heads=8, variant=V.Variant(), page_size=16)
  assert pd.supports(spec) is None
  assert "float32" in pd.supports(spec.__class__(**{**spec.__dict__, "dtype": jnp.float32}))
  assert "page_size" in pd.supports(spec.__class__(**{**spec.__dict__, "page_size": 48}))
  assert "head_dim" in pd.supports(spec.__class__(**{**spec.__dict__, "head_dim": 40}))
  # TMA copies land every page_size rows in shared memory, 128-byte aligned: page_size 1
  # with 32 bf16 columns (64 bytes) faulted with a misaligned address on the H100.
  small = {**spec.__dict__, "page_size": 1, "head_dim": 32, "v_head_dim": 32}
  assert "128-byte" in pd.supports(spec.__class__(**small))
  assert pd.supports(spec.__class__(**{**small, "head_dim": 64, "v_head_dim": 64})) is None
  assert pd.supports(spec.__class__(**{**small, "page_size": 2})) is None
  assert "128-byte" in pd.supports(spec.__class__(
      **{**small, "head_dim": 64, "v_head_dim": 64, "kv_dtype": jnp.float8_e4m3fn}))


def test_direct_call_refuses_misaligned_pages(rng):
  """Called directly (past `supports`), the compiled kernel refuses pages whose TMA copies
  would land off 128-byte alignment instead of faulting on the GPU."""
  q, cache, table, lens = _case(rng, B=1, S=40, Nq=2, Nkv=1, D=32, ps=1)
  with pytest.raises(ValueError, match="128-byte"):
    pd.decode(q, cache, table, lens, sm_scale=0.2, variant=V.Variant(), interpret=False)
