"""Shared test machinery: the float64 oracle, error metric, tolerances, input makers and
the implementation parametrization that every op's tests run under.

`impls(op)` lists the families to test for `op`: "xla" always, "pallas" once a Pallas
kernel is registered for it (interpret mode on CPU, compiled on GPU), "cuda" on a GPU.
A new kernel joins the suite by registering in `jattn/registry.py`: no test changes.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import dispatch
from jattn.bench.definitions import rel_err as bench_rel_err

ON_GPU = jax.default_backend() == "gpu"
if ON_GPU:
  # The float32 cases compare with float64 oracles (and flax's float32 path) at float32
  # tolerances; a GPU's default float32 dot rounds its inputs like TF32 (errors ~1e-3).
  jax.config.update("jax_default_matmul_precision", "highest")
TOL = {jnp.dtype(jnp.bfloat16): 1.5e-2, jnp.dtype(jnp.float16): 3e-3,
       jnp.dtype(jnp.float32): 2e-3, jnp.dtype(jnp.float64): 1e-9}

requires_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a GPU (runs in scripts/gpu_check.sh)")


# float8-only implementations: the shared suite feeds bf16/fp16/fp32, so they have their
# own tests (tests/test_fp8_gpu.py, tests/test_ffi_build.py).
FLOAT8_ONLY = ("cuda_fp8", "xla_fp8")


def impls(op: str) -> list:
  """Families to test for `op` on this machine."""
  fams = []
  for impl in dispatch.implementations(op):
    runs_here = jax.default_backend() in impl.platforms or (impl.interpretable and not ON_GPU)
    if runs_here and impl.family not in fams and impl.name not in FLOAT8_ONLY:
      fams.append(impl.family)
  return sorted(fams, key=dispatch.FAMILIES.index)


def impl_params(op: str):
  """pytest params for `op`'s families; Pallas-in-interpret cases are marked `slow`-free
  but named so `-k xla` / `-k pallas` select them."""
  return [pytest.param(f, id=f) for f in impls(op)]


def oracle(fn, *args, **kw):
  """Run a `jattn.reference` function in float64 on the CPU. Floating arrays (also inside
  pytrees such as PagedKVCache and Variant params) are upcast; ints stay as they are."""
  cpu = jax.devices("cpu")[0]

  def up(x):
    if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
      return np.asarray(jnp.asarray(x, jnp.float32) if x.dtype.itemsize == 1 else x,
                        np.float64)
    if isinstance(x, jax.Array):
      return np.asarray(x)
    return x

  with jax.enable_x64(True), jax.default_device(cpu):
    args, kw = jax.tree.map(up, (args, kw))
    out = fn(*args, **kw)
    return jax.tree.map(np.asarray, out)


def rel_err(x, ref) -> float:
  """||x - ref|| / ||ref|| over finite reference entries; NaN anywhere in x fails (the
  metric `jattn.bench` uses too); a shape mismatch is a test error, not just inf."""
  assert np.shape(x) == np.shape(ref), (np.shape(x), np.shape(ref))
  return bench_rel_err(x, ref)


def assert_close(x, ref, dtype, *, scale: float = 1.0, what: str = ""):
  tol = TOL[jnp.dtype(dtype)] * scale
  err = rel_err(x, ref)
  assert err <= tol, f"{what} relative error {err:.3e} > {tol:.1e} ({jnp.dtype(dtype).name})"


def assert_float8_close(x, exact_on_quantized, unquantized, dtype):
  """x against attention over the unquantized data. The float8 rounding of the cache is a
  property of the data: the exact math on the quantized cache must stay at float8's level
  (e4m3's 3-bit mantissa, amplified by sharp logits: median ~5 %, 0.27 at most over
  40 000 draws of the decode test's data, so the sanity bound is 0.4), and x may add
  only its own `dtype` error on top of it (triangle inequality)."""
  quant_err = rel_err(exact_on_quantized, unquantized)
  assert quant_err <= 0.4, f"float8 quantization error {quant_err:.3f}"
  err = rel_err(x, unquantized)
  assert err <= quant_err + 2 * TOL[jnp.dtype(dtype)], (
      f"relative error {err:.3e} vs the quantization's own {quant_err:.3e}")


def assert_lse_close(lse, ref, dtype, what="lse"):
  """lse: -inf exactly where the reference is -inf; elsewhere close in absolute terms."""
  lse = np.asarray(lse, np.float64)
  ref = np.asarray(ref, np.float64)
  assert np.array_equal(np.isneginf(lse), np.isneginf(ref)), f"{what}: -inf rows differ"
  fin = np.isfinite(ref)
  assert not np.isnan(lse).any(), f"{what}: NaN"
  if fin.any():
    err = np.max(np.abs(lse[fin] - ref[fin]))
    assert err <= 10 * TOL[jnp.dtype(dtype)], f"{what} max abs error {err:.3e}"


@pytest.fixture
def rng(request):
  """Fresh random inputs per test (seeded from the clock unless JATTN_TEST_SEED is set);
  a failing test's report ends with the seed that reproduces it."""
  seed = int(os.environ.get("JATTN_TEST_SEED", np.random.SeedSequence().entropy % (2**31)))
  request.node.user_properties.append(("seed", seed))
  return np.random.default_rng(seed)


def randn(rng, shape, dtype, scale=1.0):
  return jnp.asarray(rng.standard_normal(shape) * scale, jnp.float32).astype(dtype)


def paged_cache(rng, k_dense, v_dense, page_size, dtype, extra_pages=3, scales=None):
  """Scatter dense per-sequence K/V [B,S,Nkv,D] into a shuffled paged cache. Returns
  (cache, page_table). Unused pages hold random junk so that reading a wrong page shows."""
  B, S, Nkv, D = k_dense.shape
  Dv = v_dense.shape[-1]
  M = -(-S // page_size)
  P = B * M + extra_pages
  perm = rng.permutation(P)
  table = jnp.asarray(perm[:B * M].reshape(B, M), jnp.int32)
  pad = M * page_size - S

  def pages(x, d, scale):
    x = jnp.pad(jnp.asarray(x, jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0)))
    x = x.reshape(B * M, page_size, Nkv, d)
    junk = jnp.asarray(rng.standard_normal((P, page_size, Nkv, d)) * 3, jnp.float32)
    full = junk.at[jnp.asarray(perm[:B * M])].set(x)
    if scale is not None:
      return jattn.reference.quantize(full, scale, dtype)
    return full.astype(dtype)

  ks, vs = scales if scales is not None else (None, None)
  cache = jattn.PagedKVCache(pages(k_dense, D, ks), pages(v_dense, Dv, vs), ks, vs)
  return cache, table


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
  """A forced family that declares a case unsupported (NotImplementedError from the
  dispatcher, with its reason) skips that case visibly instead of failing; the reason
  shows in the `-ra` summary. Cases under "xla" never skip: the reference serves all."""
  try:
    return (yield)
  except NotImplementedError as e:
    impl = pyfuncitem.callspec.params.get("impl") if hasattr(pyfuncitem, "callspec") else None
    if impl not in (None, "xla") and "cannot serve this call" in str(e):
      pytest.skip(f"{impl} does not support this case: {e}")
    raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  """A failing test that drew random inputs names its seed: rerun it with
  JATTN_TEST_SEED=<seed> to get the same draw."""
  report = yield
  seeds = [v for k, v in item.user_properties if k == "seed"]
  if report.failed and seeds:
    report.sections.append(("random inputs", f"reproduce with JATTN_TEST_SEED={seeds[0]}"))
  return report
