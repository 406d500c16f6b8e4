"""MLA: the absorbed paged kernel equals real (un-absorbed) multi-head latent attention."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import reference, variants as V
from conftest import (ON_GPU, assert_close, assert_float8_close, assert_lse_close, impl_params,
                      oracle, randn)


def _mla_inputs(rng, B, S, H, R, Dr, Dn, Dv, dtype):
  """Latents, rope keys, per-head up-projections and per-head queries of real MLA."""
  ckv = randn(rng, (B, S, R), dtype)
  kpe = randn(rng, (B, S, Dr), dtype)
  w_uk = randn(rng, (H, Dn, R), jnp.float32, scale=R ** -0.5)
  w_uv = randn(rng, (H, R, Dv), jnp.float32, scale=R ** -0.5)
  return ckv, kpe, w_uk, w_uv


def _page(rng, x, page_size):
  """[B,S,D] -> shuffled pages [P,ps,D] and page table."""
  B, S, D = x.shape
  M = -(-S // page_size)
  P = B * M + 2
  perm = rng.permutation(P)
  xp = jnp.pad(jnp.asarray(x), ((0, 0), (0, M * page_size - S), (0, 0)))
  pages = jnp.asarray(rng.standard_normal((P, page_size, D)), x.dtype)
  pages = pages.at[jnp.asarray(perm[:B * M])].set(xp.reshape(B * M, page_size, D))
  return pages, jnp.asarray(perm[:B * M].reshape(B, M), jnp.int32), perm


@pytest.mark.parametrize("impl", impl_params("mla_decode"))
@pytest.mark.parametrize("T", [1, 3])
def test_mla_absorbed_equals_unabsorbed(impl, T, rng):
  B, S, H, R, Dr, Dn, Dv, ps = 2, 37, 4, 64, 16, 24, 24, 8
  dtype = jnp.float32
  ckv, kpe, w_uk, w_uv = _mla_inputs(rng, B, S, H, R, Dr, Dn, Dv, dtype)
  q_nope_h = randn(rng, (B, T, H, Dn), dtype)      # per-head queries of real MLA
  q_pe = randn(rng, (B, T, H, Dr), dtype)
  kv_lens = jnp.array([S, 19], jnp.int32)
  scale = (Dn + Dr) ** -0.5
  # Absorbed: q_nope = W_UK^T q, output projected by W_UV afterwards.
  q_abs = jnp.einsum("bthn,hnr->bthr", q_nope_h, w_uk)
  ckv_pages, table, perm = _page(rng, ckv, ps)
  M = table.shape[1]
  kpe_pages = jnp.asarray(rng.standard_normal((ckv_pages.shape[0], ps, Dr)), dtype)
  kpe_pages = kpe_pages.at[jnp.asarray(perm[:B * M])].set(
      jnp.pad(kpe, ((0, 0), (0, M * ps - S), (0, 0))).reshape(B * M, ps, Dr))
  args = (q_abs[:, 0], q_pe[:, 0]) if T == 1 else (q_abs, q_pe)
  o_lat = jattn.mla_decode(*args, ckv_pages, kpe_pages, table, kv_lens, sm_scale=scale,
                           implementation=impl)
  if T == 1:
    o_lat = o_lat[:, None]
  out = jnp.einsum("bthr,hrv->bthv", o_lat.astype(jnp.float32), w_uv)
  # Un-absorbed MLA in float64: per-head K = [ckv W_UK^T, kpe], V = ckv W_UV.
  k_h = jnp.einsum("bsr,hnr->bshn", ckv, w_uk)
  k_full = jnp.concatenate([k_h, jnp.broadcast_to(kpe[:, :, None], (B, S, H, Dr))], -1)
  v_full = jnp.einsum("bsr,hrv->bshv", ckv, w_uv)
  q_full = jnp.concatenate([q_nope_h, q_pe], -1)
  ro, _ = oracle(reference.attention, q_full, k_full, v_full, sm_scale=scale,
                 variant=V.causal(), q_lengths=jnp.full((B,), T, jnp.int32), kv_lengths=kv_lens)
  assert_close(out, ro, dtype, what=f"mla/{impl}")


@pytest.mark.parametrize("impl", impl_params("mla_decode"))
def test_mla_float8_latent_cache_via_append(impl, rng):
  B, S, H, R, Dr, ps = 2, 20, 4, 64, 16, 4
  P, M = 16, 6
  ckv = randn(rng, (B * S, R), jnp.float32)
  kpe = randn(rng, (B * S, Dr), jnp.float32)
  table = jnp.asarray(rng.permutation(P)[:B * M].reshape(B, M), jnp.int32)
  bids = jnp.repeat(jnp.arange(B, dtype=jnp.int32), S)
  pos = jnp.tile(jnp.arange(S, dtype=jnp.int32), B)
  cs, ks = jnp.float32(0.01), jnp.float32(0.02)
  c8, k8 = jattn.mla_append(jnp.zeros((P, ps, R), jnp.float8_e4m3fn),
                            jnp.zeros((P, ps, Dr), jnp.float8_e4m3fn), ckv, kpe, table, bids,
                            pos, ckv_scale=cs, kpe_scale=ks)
  q_nope, q_pe = randn(rng, (B, H, R), jnp.bfloat16), randn(rng, (B, H, Dr), jnp.bfloat16)
  kv_lens = jnp.array([S, 7], jnp.int32)
  o = jattn.mla_decode(q_nope, q_pe, c8, k8, table, kv_lens, sm_scale=0.1, ckv_scale=cs,
                       kpe_scale=ks, implementation=impl)
  ro, _ = oracle(reference.mla_decode, q_nope[:, None], q_pe[:, None], c8, k8, table, kv_lens,
                 sm_scale=0.1, ckv_scale=cs, kpe_scale=ks)
  assert_close(o, ro[:, 0], jnp.bfloat16)
  # And against the unquantized latents: float8 precision.
  dense, _ = oracle(reference.attention,
                    jnp.concatenate([q_nope, q_pe], -1)[:, None],
                    jnp.concatenate([ckv, kpe], -1).reshape(B, S, 1, R + Dr),
                    ckv.reshape(B, S, 1, R), sm_scale=0.1, variant=V.causal(),
                    q_lengths=jnp.ones(B, jnp.int32), kv_lengths=kv_lens)
  assert_float8_close(o, ro[:, 0], dense[:, 0], jnp.bfloat16)


def test_mla_errors(rng):
  q = randn(rng, (1, 2, 8), jnp.float32)
  with pytest.raises(ValueError, match="cache dims"):
    jattn.mla_decode(q, q[..., :4], jnp.zeros((2, 4, 16)), jnp.zeros((2, 4, 4)),
                     jnp.zeros((1, 2), jnp.int32), jnp.ones(1, jnp.int32), sm_scale=1.0)
  with pytest.raises(TypeError, match="needs ckv_scale"):
    jattn.mla_decode(q, q[..., :4], jnp.zeros((2, 4, 8), jnp.float8_e4m3fn),
                     jnp.zeros((2, 4, 4)), jnp.zeros((1, 2), jnp.int32),
                     jnp.ones(1, jnp.int32), sm_scale=1.0)


# ----------------------------------------------------------------------------- Pallas kernel

def _unabsorbed(rng, B, T, H, R, Dr, ps, S, kv_lens, dtype):
  """Absorbed kernel inputs (paged) and the float64 un-absorbed MLA output / lse."""
  Dn = Dv = 24
  ckv, kpe, w_uk, w_uv = _mla_inputs(rng, B, S, H, R, Dr, Dn, Dv, dtype)
  q_h = randn(rng, (B, T, H, Dn), dtype)
  q_pe = randn(rng, (B, T, H, Dr), dtype)
  q_abs = jnp.einsum("bthn,hnr->bthr", q_h.astype(jnp.float32), w_uk).astype(dtype)
  ckv_pages, table, perm = _page(rng, ckv, ps)
  M = table.shape[1]
  kpe_pages = jnp.asarray(rng.standard_normal((ckv_pages.shape[0], ps, Dr)), dtype)
  kpe_pages = kpe_pages.at[jnp.asarray(perm[:B * M])].set(
      jnp.pad(kpe, ((0, 0), (0, M * ps - S), (0, 0))).reshape(B * M, ps, Dr))
  # Un-absorbed MLA in float64: per-head K = [ckv W_UK^T, kpe], V = ckv W_UV, query q_h.
  scale = (Dn + Dr) ** -0.5
  k_h = jnp.einsum("bsr,hnr->bshn", ckv.astype(jnp.float32), w_uk)
  k_full = jnp.concatenate([k_h, jnp.broadcast_to(kpe[:, :, None], (B, S, H, Dr))], -1)
  v_full = jnp.einsum("bsr,hrv->bshv", ckv.astype(jnp.float32), w_uv)
  q_full = jnp.concatenate([q_h, q_pe], -1)
  ro, rl = oracle(reference.attention, q_full, k_full, v_full, sm_scale=scale,
                  variant=V.causal(), q_lengths=jnp.full((B,), T, jnp.int32),
                  kv_lengths=kv_lens)
  return (q_abs, q_pe, ckv_pages, kpe_pages, table), w_uv, scale, ro, rl


@pytest.mark.parametrize("T,H,R,Dr,ps,S,splits,share_p", [
    (1, 16, 128, 16, 16, 40, None, True),     # one row block of 16 rows, shared P
    (3, 4, 64, 16, 8, 37, None, False),       # causal new tokens, 12 rows -> 16, both S
    (2, 64, 128, 32, 64, 150, 2, True),       # 128 rows = 2 CTAs, split-K merged, page 64
])
def test_mla_pallas_kernel_bf16(T, H, R, Dr, ps, S, splits, share_p, rng):
  """The Pallas kernel (compiled on a GPU; interpreted on CPU with uninitialized memory
  poisoned with NaN) against real per-head MLA in float64: value up-projection applied
  after the latent output."""
  from jax.experimental.pallas import mosaic_gpu as plgpu
  from jattn.pallas import mla
  B, dtype = 2, jnp.bfloat16
  kv_lens = jnp.array([S, max(T, S // 3)], jnp.int32)
  args, w_uv, scale, ro, rl = _unabsorbed(rng, B, T, H, R, Dr, ps, S, kv_lens, dtype)
  o_lat, lse = mla.mla_decode(*args, kv_lens, sm_scale=scale,
                              interpret=False if ON_GPU else plgpu.InterpretGPUParams(
                                  uninitialized_memory="nan"),
                              config=mla.MLAConfig(splits=splits, share_p=share_p))
  out = jnp.einsum("bthr,hrv->bthv", o_lat.astype(jnp.float32), w_uv)
  assert_close(out, ro, dtype, what="mla pallas")
  assert_lse_close(lse, rl, dtype)


def test_mla_pallas_public_api_return_lse(rng):
  """jattn.mla_decode(implementation="pallas", return_lse=True) with [B,H,*] queries."""
  B, H, R, Dr, ps, S = 2, 16, 64, 16, 16, 50
  kv_lens = jnp.array([S, 0], jnp.int32)     # an empty sequence: o = 0, lse = -inf
  args, w_uv, scale, ro, rl = _unabsorbed(rng, B, 1, H, R, Dr, ps, S, kv_lens, jnp.bfloat16)
  q_abs, q_pe = args[0][:, 0], args[1][:, 0]
  o, lse = jattn.mla_decode(q_abs, q_pe, *args[2:], kv_lens, sm_scale=scale,
                            return_lse=True, implementation="pallas")
  assert o.shape == (B, H, R) and lse.shape == (B, H)
  out = jnp.einsum("bhr,hrv->bhv", o.astype(jnp.float32), w_uv)
  assert_close(out, ro[:, 0], jnp.bfloat16, what="mla pallas api")
  assert_lse_close(lse, rl[:, 0], jnp.bfloat16)
  assert not np.asarray(o[1]).any()


def test_mla_pallas_supports():
  from jattn import dispatch
  from jattn.pallas import mla
  spec = dispatch.Spec(op="mla_decode", platform="gpu", dtype=jnp.bfloat16,
                       kv_dtype=jnp.bfloat16, head_dim=576, v_head_dim=512, num_q_heads=128,
                       num_kv_heads=1, page_size=64, q_len=1, kv_len=4096, batch=64)
  assert mla.supports(spec) is None
  assert "float8" in mla.supports(dataclasses.replace(spec, kv_dtype=jnp.float8_e4m3fn))
  assert "bf16/fp16" in mla.supports(dataclasses.replace(spec, dtype=jnp.float32,
                                                         kv_dtype=jnp.float32))
  assert "page_size" in mla.supports(dataclasses.replace(spec, page_size=4))


def test_mla_shared_p_schedule_needs_r_multiple_of_128():
  """Shared P lowers only for R % 128 == 0: the heuristic falls back to both-compute-S,
  and asking for it explicitly is an error that says why."""
  from jattn.pallas import mla
  assert mla._schedule(512, 64, 2, mla.MLAConfig())[1] is True
  assert mla._schedule(64, 16, 2, mla.MLAConfig())[1] is False
  with pytest.raises(ValueError, match="multiple of 128"):
    mla._schedule(64, 16, 2, mla.MLAConfig(share_p=True))
