"""Multi-device cases (8 host devices), run by tests/test_sharding.py in a subprocess:
every op on batch/head-sharded inputs equals the single-device result, forward and
backward, with no all-gather in the compiled HLO; unsupported shardings raise; ring
attention (sequence parallel) equals dense attention; the scaling benchmark runs.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest tests/sharding_cases.py
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import jattn
from jattn import variants as V
from conftest import paged_cache, randn

NDEV = 8
HAVE_DEVICES = jax.device_count() >= NDEV
multidevice = pytest.mark.skipif(
    not HAVE_DEVICES, reason=f"needs {NDEV} host devices (run by tests/test_sharding.py)")


# ----------------------------------------------------------------------------- helpers

MODES = ["explicit", "auto"]


def _mesh(mode, shape=(2, 4), names=("dp", "tp")):
  t = AxisType.Explicit if mode == "explicit" else AxisType.Auto
  return jax.make_mesh(shape, names, axis_types=(t,) * len(shape))


def _put(mesh, tree, specs):
  """device_put each leaf of `tree` with the matching PartitionSpec of `specs` (a prefix)."""
  return jax.device_put(tree, jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                           is_leaf=lambda s: isinstance(s, P)))


def _same(x, ref, what=""):
  for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=2e-5, atol=2e-5, err_msg=what)


def _run_no_gather(fn, *args):
  """Compile fn for args, assert its HLO has no all-gather, run it: (outputs, HLO)."""
  compiled = jax.jit(fn).lower(*args).compile()
  hlo = compiled.as_text()
  gathers = [l.strip()[:160] for l in hlo.splitlines() if "all-gather" in l]
  assert not gathers, "compiled HLO gathers:\n" + "\n".join(gathers)
  return compiled(*args), hlo


def _check(mode, fn, args, specs, *, grad=None):
  """fn on sharded args (under jit, in a mesh context) == fn on one device; no gathers.
  `grad`: argnums to differentiate sum(out * cotangent) by, compared the same way."""
  ref = jax.jit(fn)(*args)
  cts = jax.tree.map(lambda o: jnp.cos(jnp.arange(o.size, dtype=jnp.float32)).reshape(o.shape),
                     ref)

  def loss(*a):
    out = fn(*a)
    return sum(jnp.sum(jnp.where(jnp.isfinite(o), o, 0).astype(jnp.float32) * c)
               for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(cts)))

  g = jax.grad(loss, argnums=grad) if grad is not None else None
  ref_grads = jax.jit(g)(*args) if g is not None else None
  mesh = _mesh(mode)
  with jax.set_mesh(mesh):
    sargs = _put(mesh, args, specs)
    _same(_run_no_gather(fn, *sargs)[0], ref, "forward")
    if g is not None:
      _same(_run_no_gather(g, *sargs)[0], ref_grads, "gradient")


def _user_variant():
  """Reads ctx.head and ctx.batch: must see global indices inside a shard."""
  def bias(s, ctx):
    return (s - 0.05 * (ctx.head + 1).astype(s.dtype) * jnp.abs(ctx.kv_pos - ctx.q_pos)
            + 0.3 * ctx.batch.astype(s.dtype))

  def mask(ctx):
    return (ctx.kv_pos + ctx.head + ctx.batch) % 3 != 0

  return jattn.compose(V.alibi(V.alibi_slopes(8)),
                       V.Variant(logits_transform=bias, logits_mask=mask, name="user"))


# ----------------------------------------------------------------------------- dense ops

@multidevice
@pytest.mark.parametrize("mode,where", [("explicit", "batch_heads"), ("auto", "batch_heads"),
                                        ("explicit", "heads"), ("auto", "batch")])
def test_attention(mode, where, rng):
  B, T, S, Nq, Nkv, D = 4, 8, 12, 8, 4, 16
  q, k, v = (randn(rng, (B, T, Nq, D), jnp.float32), randn(rng, (B, S, Nkv, D), jnp.float32),
             randn(rng, (B, S, Nkv, D), jnp.float32))
  kv_lengths = jnp.asarray([12, 5, 9, 1], jnp.int32)
  var = _user_variant()
  b, h = {"batch": ("dp", None), "heads": (None, "tp"), "batch_heads": ("dp", "tp")}[where]

  def fn(q, k, v, kv_lengths):
    return jattn.attention(q, k, v, causal=True, variant=var, kv_lengths=kv_lengths,
                           return_lse=True)

  _check(mode, fn, (q, k, v, kv_lengths), (P(b, None, h), P(b, None, h), P(b, None, h),
                                           P(b)), grad=(0, 1, 2))


@multidevice
def test_vmap_over_a_sharded_axis(rng):
  """Explicit axes: vmap over a batch axis sharded on 'dp', heads on 'tp'."""
  L, B, T, Nq, Nkv, D = 2, 2, 8, 8, 4, 16
  q, k, v = (randn(rng, (L, B, T, Nq, D), jnp.float32), randn(rng, (L, B, T, Nkv, D), jnp.float32),
             randn(rng, (L, B, T, Nkv, D), jnp.float32))
  fn = jax.vmap(functools.partial(jattn.attention, causal=True))
  spec = P("dp", None, None, "tp")
  _check("explicit", fn, (q, k, v), (spec,) * 3)


@multidevice
@pytest.mark.parametrize("mode", MODES)
def test_block_sparse_attention(mode, rng):
  B, T, S, Nq, Nkv, D = 2, 16, 16, 8, 4, 16
  q, k, v = (randn(rng, (B, T, Nq, D), jnp.float32), randn(rng, (B, S, Nkv, D), jnp.float32),
             randn(rng, (B, S, Nkv, D), jnp.float32))
  layout = jattn.block_sparse.from_dense(jnp.asarray(rng.random((Nq, 4, 4)) < 0.6), (4, 4))

  def fn(q, k, v):
    return jattn.block_sparse_attention(q, k, v, layout, return_lse=True)

  spec = P("dp", None, "tp")
  _check(mode, fn, (q, k, v), (spec, spec, spec), grad=(0, 1, 2))


@multidevice
@pytest.mark.parametrize("mode", MODES)
def test_prefill_ragged(mode, rng):
  Tq, Tk, Nq, Nkv, D = 12, 20, 8, 4, 16
  q, k, v = (randn(rng, (Tq, Nq, D), jnp.float32), randn(rng, (Tk, Nkv, D), jnp.float32),
             randn(rng, (Tk, Nkv, D), jnp.float32))
  qo, ko = jnp.asarray([0, 5, 11], jnp.int32), jnp.asarray([0, 9, 18], jnp.int32)

  def fn(q, k, v):
    return jattn.prefill_ragged(q, k, v, qo, ko, return_lse=True)

  spec = P(None, "tp")
  _check(mode, fn, (q, k, v), (spec, spec, spec), grad=(0, 1, 2))


@multidevice
@pytest.mark.parametrize("mode", MODES)
def test_merge_states(mode, rng):
  o1, o2 = randn(rng, (4, 8, 8, 16), jnp.float32), randn(rng, (4, 8, 8, 16), jnp.float32)
  l1, l2 = randn(rng, (4, 8, 8), jnp.float32), randn(rng, (4, 8, 8), jnp.float32)
  so, sl = P("dp", "tp"), P("dp", "tp")     # elementwise: even the sequence may be split
  _check(mode, jattn.merge_states, (o1, l1, o2, l2), (so, sl, so, sl))


# ----------------------------------------------------------------------------- paged ops

def _paged(rng, B=4, S=24, Nkv=4, D=16, page_size=8):
  kd, vd = randn(rng, (B, S, Nkv, D), jnp.float32), randn(rng, (B, S, Nkv, D), jnp.float32)
  cache, table = paged_cache(rng, kd, vd, page_size, jnp.float32, extra_pages=4)
  return cache, table


CACHE_SPEC = jattn.PagedKVCache(P(None, None, "tp"), P(None, None, "tp"))


@multidevice
@pytest.mark.parametrize("mode", MODES)
def test_decode_tensor_parallel(mode, rng):
  """Decode with the cache sharded by kv head (TP) and the batch over dp."""
  cache, table = _paged(rng)
  q = randn(rng, (4, 8, 16), jnp.float32)
  kv_lens = jnp.asarray([24, 3, 17, 9], jnp.int32)

  def fn(q, cache, table, kv_lens):
    return jattn.decode(q, cache, table, kv_lens, variant=_user_variant(), return_lse=True)

  _check(mode, fn, (q, cache, table, kv_lens),
         (P("dp", "tp"), CACHE_SPEC, P("dp"), P("dp")))


@multidevice
@pytest.mark.parametrize("mode", MODES)
def test_prefill_paged(mode, rng):
  cache, table = _paged(rng)
  q = randn(rng, (20, 8, 16), jnp.float32)
  kv_lens = jnp.asarray([24, 3, 17, 9], jnp.int32)
  q_offsets = jnp.asarray([0, 8, 11, 15, 20], jnp.int32)

  def fn(q, cache):
    return jattn.prefill(q, cache, table, kv_lens, q_offsets, return_lse=True)

  _check(mode, fn, (q, cache), (P(None, "tp"), CACHE_SPEC))


@multidevice
@pytest.mark.parametrize("mode", MODES)
def test_append_kv(mode, rng):
  cache, table = _paged(rng)
  k_new, v_new = randn(rng, (6, 4, 16), jnp.float32), randn(rng, (6, 4, 16), jnp.float32)
  batch_ids = jnp.asarray([0, 0, 2, 3, -1, 1], jnp.int32)
  positions = jnp.asarray([3, 4, 0, 23, 5, 30], jnp.int32)

  def fn(cache, k_new, v_new):
    return jattn.append_kv(cache, k_new, v_new, table, batch_ids, positions)

  _check(mode, fn, (cache, k_new, v_new), (CACHE_SPEC, P(None, "tp"), P(None, "tp")))
  mesh = _mesh(mode)
  with jax.set_mesh(mesh):
    out = jax.jit(fn)(*_put(mesh, (cache, k_new, v_new), (CACHE_SPEC, P(None, "tp"),
                                                           P(None, "tp"))))
  assert out.k_pages.sharding.spec[2] == "tp"


@multidevice
@pytest.mark.parametrize("mode", MODES)
def test_mla_decode(mode, rng):
  B, H, R, Dr, ps = 4, 8, 32, 8, 8
  ckv, kpe = randn(rng, (12, ps, R), jnp.float32), randn(rng, (12, ps, Dr), jnp.float32)
  table = jnp.asarray(rng.permutation(12)[:8].reshape(B, 2), jnp.int32)
  kv_lens = jnp.asarray([16, 3, 9, 12], jnp.int32)
  qn, qp = randn(rng, (B, H, R), jnp.float32), randn(rng, (B, H, Dr), jnp.float32)

  def fn(qn, qp, ckv, kpe):
    return jattn.mla_decode(qn, qp, ckv, kpe, table, kv_lens, sm_scale=0.1, return_lse=True)

  _check(mode, fn, (qn, qp, ckv, kpe), (P("dp", "tp"), P("dp", "tp"), P(), P()))


# ----------------------------------------------------------------------------- errors

@multidevice
def test_unsupported_shardings_raise(rng):
  q, k = randn(rng, (4, 8, 8, 16), jnp.float32), randn(rng, (4, 8, 4, 16), jnp.float32)
  mesh = _mesh("explicit")
  with jax.set_mesh(mesh):
    f = jax.jit(lambda q, k, v: jattn.attention(q, k, v, causal=True))
    with pytest.raises(jattn.ShardingError, match=r"q .* sharded along T \(dim 1\).*'tp'.*ring_attention"):
      f(*_put(mesh, (q, k, k), (P(None, "tp"), P(), P())))
    with pytest.raises(jattn.ShardingError, match="inconsistent"):
      f(*_put(mesh, (q, k, k), (P(None, None, "tp"), P(None, None, "dp"), P())))
    k2 = randn(rng, (4, 8, 2, 16), jnp.float32)        # 2 kv heads over 4 devices
    with pytest.raises(jattn.ShardingError, match="does not divide"):
      f(*_put(mesh, (q, k2, k2), (P(None, None, "tp"), P(), P())))
    cache, table = _paged(rng)
    with pytest.raises(jattn.ShardingError, match=r"cache.k_pages .* along P .*kv head"):
      jax.jit(lambda c: jattn.decode(q[:, 0], c, table, jnp.ones(4, jnp.int32)))(
          _put(mesh, cache, jattn.PagedKVCache(P("tp"), P("tp"))))
  mesh = _mesh("auto")   # auto axes: the check runs when the compiler has chosen shardings
  with pytest.raises(Exception, match=r"sharded along T \(dim 1\)"):
    f.lower(*_put(mesh, (q, k, k), (P(None, "tp"), P(), P()))).compile()


# ----------------------------------------------------------------------------- ring

@multidevice
@pytest.mark.parametrize("n,causal,layout", [(8, True, "zigzag"), (4, True, "contiguous"),
                                             (2, False, "zigzag")])
def test_ring_attention(n, causal, layout, rng):
  B, T, Nq, Nkv, D = 1, 8 * n, 4, 2, 16
  q, k, v, do = (randn(rng, (B, T, Nq, D), jnp.float32), randn(rng, (B, T, Nkv, D), jnp.float32),
                 randn(rng, (B, T, Nkv, D), jnp.float32), randn(rng, (B, T, Nq, D), jnp.float32))
  mesh = jax.make_mesh((n,), ("sp",), devices=jax.devices()[:n])
  zz = causal and layout == "zigzag"
  order = functools.partial(jattn.ring.zigzag, n=n) if zz else (lambda x: x)
  unorder = functools.partial(jattn.ring.unzigzag, n=n) if zz else (lambda x: x)
  ring = jax.shard_map(functools.partial(jattn.ring_attention, axis_name="sp", causal=causal,
                                         layout=layout, return_lse=True),
                       mesh=mesh, in_specs=P(None, "sp"), out_specs=P(None, "sp"))

  def loss(q, k, v, do):
    o, lse = ring(q, k, v)
    return jnp.sum(o * do) + jnp.sum(jnp.sin(lse)), (o, lse)

  def ref_loss(q, k, v, do):
    o, lse = jattn.attention(q, k, v, causal=causal, return_lse=True)
    return jnp.sum(o * do) + jnp.sum(jnp.sin(lse)), (o, lse)

  (_, ref), rgrads = jax.value_and_grad(ref_loss, (0, 1, 2), has_aux=True)(q, k, v, do)
  with jax.set_mesh(mesh):
    args = _put(mesh, tuple(order(x) for x in (q, k, v, do)), (P(None, "sp"),) * 4)
    ((_, out), grads), hlo = _run_no_gather(
        jax.value_and_grad(loss, (0, 1, 2), has_aux=True), *args)
  assert "collective-permute" in hlo
  _same([unorder(np.asarray(x)) for x in out], ref, "ring forward")
  _same([unorder(np.asarray(g)) for g in grads], rgrads, "ring gradient")


@multidevice
def test_ring_attention_with_tensor_parallel_heads(rng):
  """Context parallel over 'sp' and heads over 'tp' (explicit): the ring's per-step
  attention is itself head-sharded by jattn.sharding."""
  B, T, Nq, Nkv, D = 1, 32, 4, 2, 16
  q, k, v = (randn(rng, (B, T, Nq, D), jnp.float32), randn(rng, (B, T, Nkv, D), jnp.float32),
             randn(rng, (B, T, Nkv, D), jnp.float32))
  mesh = jax.make_mesh((4, 2), ("sp", "tp"))
  ring = jax.shard_map(functools.partial(jattn.ring_attention, axis_name="sp"), mesh=mesh,
                       in_specs=P(None, "sp"), out_specs=P(None, "sp"), axis_names={"sp"})
  ref = jattn.attention(q, k, v, causal=True)
  z = functools.partial(jattn.ring.zigzag, n=4)
  with jax.set_mesh(mesh):
    args = _put(mesh, (z(q), z(k), z(v)), (P(None, "sp", "tp"),) * 3)
    out, _ = _run_no_gather(ring, *args)
  assert out.sharding.spec[2] == "tp"
  _same(jattn.ring.unzigzag(np.asarray(out), 4), ref)


# ----------------------------------------------------------------------------- kernels

@multidevice
def test_pallas_kernel_per_shard(rng):
  """The dispatcher picks the Pallas kernel for the per-shard shapes and the compiled
  program has no all-gather. (Compiled only: the Mosaic GPU interpreter keeps one global
  GPU state, so several CPU devices cannot run it at once; GPU CI runs it.)"""
  if not any(i.family == "pallas" for i in jattn.implementations("attention")):
    pytest.skip("no Pallas attention kernel registered")
  B, T, Nq, Nkv, D = 1, 64, 8, 4, 64
  q, k, v = (randn(rng, (B, T, Nq, D), jnp.bfloat16), randn(rng, (B, T, Nkv, D), jnp.bfloat16),
             randn(rng, (B, T, Nkv, D), jnp.bfloat16))
  mesh = _mesh("explicit")

  def fn(q, k, v):
    return jattn.attention(q, k, v, causal=True, implementation="pallas")

  with jax.set_mesh(mesh):
    args = _put(mesh, (q, k, v), (P(None, None, "tp"),) * 3)
    lowered = jax.jit(fn).lower(*args)
    assert jattn.dispatch.chosen("attention").startswith("pallas")
    assert "tensor<1x64x2x64xbf16>" in lowered.as_text()     # the kernel's local q
    hlo = lowered.compile().as_text()
  assert "all-gather" not in hlo


# ----------------------------------------------------------------------------- benchmark

@multidevice
def test_scaling_benchmark_tiny(tmp_path):
  from benchmarks import scaling
  path = scaling.main(["--tiny", "--devices", "1,8", "--out", str(tmp_path)])
  import json
  rows = json.loads(open(path).read())["rows"]
  kinds = {r["bench"] for r in rows}
  assert kinds == {"decode_tp", "prefill_tp", "ring"}, kinds
  assert {r["devices"] for r in rows} == {1, 8}
  assert all(r["status"] == "ok" and r["max_err"] < 1e-3 for r in rows), rows
  assert all(0 < r["efficiency"] for r in rows)
