"""CUDA FP8 kernels off the GPU: nvcc compile-only builds for sm_90a and sm_100a, the
JIT cache (second build compiles nothing, concurrent processes compile once), the
missing-nvcc error, and float8 dispatch to the XLA path with its reason logged."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jattn
from jattn import dispatch, reference
from jattn.ffi import build, fp8
from conftest import assert_close, oracle, randn

try:
  NVCC = build.nvcc_path()
except RuntimeError:
  NVCC = None
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed: the compile-only "
                                "test of the CUDA kernels needs the CUDA toolkit")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@needs_nvcc
def test_every_kernel_compiles_for_sm90a_and_sm100a_and_is_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("JATTN_CACHE_DIR", str(tmp_path))
  pairs = [(build.prefill_kernel(128, True, arch), arch) for arch in build.ARCHS]
  pairs += [(build.decode_kernel(128, 8), arch) for arch in build.ARCHS]
  before = build.stats["compiles"]
  libs = build.build_many(pairs)
  assert build.stats["compiles"] - before == len(pairs)
  assert all(p.exists() and p.stat().st_size > 0 for p in libs)
  assert len(set(libs)) == len(pairs)
  # ptxas serializing the wgmma pipeline (C7513) is a silent 2x slowdown: none allowed.
  assert not build.stats["perf_warnings"], build.stats["perf_warnings"]
  # Second build: every library comes from the cache.
  assert build.build_many(pairs) == libs
  assert build.stats["compiles"] - before == len(pairs)
  cuobjdump = shutil.which("cuobjdump")
  if cuobjdump:  # the sm_90a prefill must use Hopper's FP8 tensor-core instruction
    sass = subprocess.run([cuobjdump, "-sass", str(libs[0])], capture_output=True,
                          text=True).stdout
    assert "QGMMA" in sass


def test_cache_key_changes_with_params_and_arch(tmp_path, monkeypatch):
  monkeypatch.setenv("JATTN_CACHE_DIR", str(tmp_path))
  monkeypatch.setattr(build, "nvcc_version", lambda nvcc: "nvcc fake 1.0")
  a = build.library_path(build.prefill_kernel(128, True, "sm_90a"), "sm_90a", "nvcc")
  b = build.library_path(build.prefill_kernel(128, False, "sm_90a"), "sm_90a", "nvcc")
  c = build.library_path(build.prefill_kernel(128, True, "sm_100a"), "sm_100a", "nvcc")
  assert len({a, b, c}) == 3
  monkeypatch.setattr(build, "nvcc_version", lambda nvcc: "nvcc fake 2.0")
  assert build.library_path(build.prefill_kernel(128, True, "sm_90a"), "sm_90a", "nvcc") != a
  with pytest.raises(ValueError, match="wgmma exists only on sm_90a"):
    build.prefill_kernel(128, True, "sm_100a", wgmma=True)


def test_concurrent_processes_compile_once(tmp_path):
  """Two processes ask for the same library at once: the file lock lets one compile;
  the other finds the finished library (a fake nvcc counts the compiles)."""
  log = tmp_path / "calls"
  fake = tmp_path / "nvcc"
  fake.write_text(textwrap.dedent(f"""\
      #!/bin/sh
      if [ "$1" = "--version" ]; then echo fake nvcc; exit 0; fi
      echo call >> {log}
      sleep 1
      while [ "$#" -gt 1 ]; do shift; done
      echo lib > "$1"
      """))
  fake.chmod(0o755)
  env = dict(os.environ, JATTN_NVCC=str(fake), JATTN_CACHE_DIR=str(tmp_path / "cache"),
             PYTHONPATH=ROOT)
  code = ("from jattn.ffi import build; "
          "print(build.build(build.decode_kernel(64, 8), 'sm_90a'))")
  procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            text=True) for _ in range(2)]
  outs = [p.communicate(timeout=120)[0].strip() for p in procs]
  assert all(p.returncode == 0 for p in procs)
  assert outs[0] == outs[1] and os.path.exists(outs[0])
  assert log.read_text().count("call") == 1
  assert not [f for f in os.listdir(tmp_path / "cache") if ".tmp" in f]


def test_missing_nvcc_is_a_clear_error(monkeypatch, tmp_path):
  for var in ("JATTN_NVCC", "CUDA_HOME"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("PATH", str(tmp_path))
  monkeypatch.setattr(build, "DEFAULT_NVCC", str(tmp_path / "none"))
  with pytest.raises(RuntimeError, match="nvcc not found"):
    build.build(build.decode_kernel(64, 8), "sm_90a")


def _fp8_inputs(rng, B, T, S, Nq, Nkv, D):
  f8 = jnp.float8_e4m3fn
  q, k, v = (randn(rng, s, jnp.float32).astype(f8)
             for s in ((B, T, Nq, D), (B, S, Nkv, D), (B, S, Nkv, D)))
  qs = jnp.asarray(rng.uniform(0.5, 2.0, (Nq,)), jnp.float32)
  vs = jnp.asarray(rng.uniform(0.5, 2.0, (Nkv,)), jnp.float32)
  return q, k, v, qs, jnp.float32(0.8), vs


@pytest.mark.skipif(jax.default_backend() == "gpu",
                    reason="off-GPU dispatch; on a GPU the CUDA kernel serves it (test_fp8_gpu.py)")
@pytest.mark.parametrize("causal", [False, True])
def test_float8_attention_goes_to_xla_off_gpu(rng, causal, caplog):
  B, T, S, Nq, Nkv, D = 2, 24, 40, 4, 2, 64
  q, k, v, qs, ks, vs = _fp8_inputs(rng, B, T, S, Nq, Nkv, D)
  with caplog.at_level(logging.DEBUG, logger="jattn"):
    o, lse = jattn.attention(q, k, v, causal=causal, q_scale=qs, k_scale=ks, v_scale=vs,
                             return_lse=True)
  assert o.dtype == jnp.bfloat16 and o.shape == (B, T, Nq, D)
  if jax.default_backend() == "cpu":
    assert dispatch.chosen("attention") == "xla_fp8"
    assert "cuda_fp8: runs on ['gpu'], not cpu" in caplog.text
  var = jattn.variants.causal() if causal else jattn.Variant(name="identity")
  ro, rl = oracle(reference.attention_fp8, q, k, v, qs, jnp.full((Nkv,), 0.8, jnp.float32),
                  vs, sm_scale=1 / np.sqrt(D), variant=var)
  assert_close(o, ro, jnp.bfloat16, what="fp8 attention (xla)")
  np.testing.assert_allclose(lse, rl, atol=1e-3)


def test_float8_validation_names_the_argument(rng):
  q, k, v, qs, ks, vs = _fp8_inputs(rng, 1, 8, 8, 4, 2, 64)
  with pytest.raises(ValueError, match="q_scale"):
    jattn.attention(q, k, v, q_scale=jnp.ones((3,), jnp.float32))
  with pytest.raises(ValueError, match="k_scale is only for float8"):
    jattn.attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                    k_scale=1.0)
  if jax.default_backend() != "gpu":   # off the GPU the CUDA family says why it can't run
    with pytest.raises(NotImplementedError, match="cuda_fp8"):
      jattn.attention(q, k, v, implementation="cuda")


def test_cuda_checks_give_reasons():
  base = dict(op="attention", platform="gpu", dtype=jnp.float8_e4m3fn,
              kv_dtype=jnp.float8_e4m3fn, head_dim=128, v_head_dim=128, num_q_heads=8,
              num_kv_heads=2, variant=jattn.variants.causal(), batch=2)
  assert "head_dim 96" in fp8.supports_attention(dispatch.Spec(**{**base, "head_dim": 96,
                                                                   "v_head_dim": 96}))
  assert "float8_e4m3fn" in fp8.supports_attention(dispatch.Spec(**{**base,
                                                                    "dtype": jnp.bfloat16}))
  assert "variant" in fp8.supports_attention(
      dispatch.Spec(**{**base, "variant": jattn.variants.sliding_window(8)}))
  assert "lengths" in fp8.supports_attention(
      dispatch.Spec(**{**base, "extra": (("has_lengths", True),)}))
  dec = dict(base, op="decode", dtype=jnp.bfloat16, variant=jattn.Variant(name="identity"))
  assert "group 32" in fp8.supports_decode(dispatch.Spec(**{**dec, "num_q_heads": 64}))
  if jax.default_backend() == "cpu":
    assert fp8.supports_attention(dispatch.Spec(**base)) == "no CUDA GPU"
    assert fp8.supports_decode(dispatch.Spec(**dec)) == "no CUDA GPU"


def test_decode_splits_cover_the_cache():
  """Splits cover the cache without an empty one, in whole TMA stages (128 tokens, so
  the decode's TMA path can take them), and a small batch is split to fill the GPU."""
  for B, N, L in [(32, 8, 4096), (1, 1, 100), (128, 8, 2048), (2, 4, 33), (3, 2, 2100)]:
    splits, st = fp8.decode_splits(B, N, L)
    assert st % 128 == 0 and splits * st >= L and (splits - 1) * st < L
  assert fp8.decode_splits(32, 8, 4096)[0] == 1
  assert fp8.decode_splits(1, 1, 8192)[0] > 1
