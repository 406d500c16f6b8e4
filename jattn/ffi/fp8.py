"""The CUDA FP8 kernels as jattn implementations ("cuda_fp8" in the registry).

  attention(q, k, v, ...)  float8_e4m3fn q, k, v with float32 per-head scales ->
                           (bf16 o [B,T,Nq,D], float32 lse [B,T,Nq]); no variant or causal.
  decode(q, cache, ...)    bf16 q [B,Nq,D] against a float8_e4m3fn PagedKVCache ->
                           (bf16 o [B,Nq,D], float32 lse [B,Nq]).

`supports_attention(spec)` / `supports_decode(spec)` give the reason a call cannot be
served (the dispatcher then passes over to the next implementation, the Pallas decode or
the XLA attention, and logs why). Each call compiles
(once, cached on disk: `jattn.ffi.build`) the exact instantiation for the device's arch
(sm_90a on Hopper, sm_100a on Blackwell), loads it, registers its handler with
`jax.ffi.register_ffi_target(..., platform="CUDA")` and calls it with
`jax.ffi.ffi_call`; shapes are checked here at trace time and again in C++.

Prefill takes q, k, v as they are; the handler transposes V with a kernel of its own on
16 SMs into a workspace (the call's third, discarded output) and launches the attention
kernel as that kernel's programmatic dependent on the other SMs, where it waits for each
(batch, kv head)'s V^T before reading it (the FP8 wgmma needs V^T, keys contiguous, as its
B operand; see csrc/prefill_fp8.cuh). Decode streams the pages through a TMA ring
at head_dim 128 with pages of 8-128 tokens, and loads them straight into registers
otherwise (`csrc/decode_fp8.cuh`).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jattn.ffi import build

E4M3 = jnp.dtype(jnp.float8_e4m3fn)
HEAD_DIMS = build.HEAD_DIMS

_lock = threading.Lock()
_targets: dict[tuple, str] = {}
_libs: list = []  # keep loaded libraries alive


# ----------------------------------------------------------------------------- device

def device_arch() -> Optional[str]:
  """The arch to build for on the default GPU: sm_90a (cc 9.x), sm_100a (cc 10.x), or
  None when there is no such GPU."""
  try:
    dev = jax.devices("gpu")[0]
  except RuntimeError:
    return None
  cc = str(getattr(dev, "compute_capability", ""))
  major = cc.split(".")[0]
  return {"9": "sm_90a", "10": "sm_100a"}.get(major)


def _device_check() -> Optional[str]:
  arch = device_arch()
  if arch is None:
    try:
      cc = getattr(jax.devices("gpu")[0], "compute_capability", "?")
    except RuntimeError:
      return "no CUDA GPU"
    return f"needs compute capability 9.0 (sm_90a) or 10.x (sm_100a), found {cc}"
  try:
    build.nvcc_path()
  except RuntimeError as e:
    return str(e)
  return None


def _target(kernel: build.Kernel, arch: str) -> str:
  """Build (or find in the cache) and register `kernel` for `arch`; its FFI target name."""
  key = (kernel, arch)
  with _lock:
    if key not in _targets:
      lib = ctypes.cdll.LoadLibrary(str(build.build(kernel, arch)))
      name = f"jattn_{kernel.name}_{kernel.tag()}_{arch}"
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, kernel.symbol)),
                                  platform="CUDA")
      _libs.append(lib)
      _targets[key] = name
    return _targets[key]


def _variant_kind(variant) -> Optional[str]:
  """"none" / "causal" for the variants the kernels implement, else None."""
  if variant is None or variant.is_identity:
    return "none"
  if (variant.name == "causal" and variant.band == (None, 0) and not variant.has_custom_mask
      and variant.query_transform is None and variant.key_transform is None
      and variant.logits_transform is None and not variant.params):
    return "causal"
  return None


# ----------------------------------------------------------------------------- prefill

def supports_attention(spec) -> Optional[str]:
  if spec.op != "attention":
    return f"no CUDA FP8 kernel for op {spec.op!r}"
  if jnp.dtype(spec.dtype) != E4M3 or jnp.dtype(spec.kv_dtype) != E4M3:
    return (f"q/k/v dtypes {jnp.dtype(spec.dtype).name}/{jnp.dtype(spec.kv_dtype).name} "
            "(the CUDA kernel takes float8_e4m3fn)")
  if spec.head_dim not in HEAD_DIMS or spec.v_head_dim != spec.head_dim:
    return f"head_dim {spec.head_dim}/{spec.v_head_dim} (needs equal dims in {HEAD_DIMS})"
  if _variant_kind(spec.variant) is None:
    return f"variant {spec.variant!r} (only none or causal)"
  if dict(spec.extra).get("has_lengths"):
    return "q_lengths/kv_lengths are not supported"
  if spec.batch > 65535 or spec.num_q_heads > 65535:
    return "batch or heads > 65535"
  return _device_check()


VT_KEYS = 128  # kVtKeys in csrc/prefill_fp8.cuh: the V^T workspace's keys are padded to it


def prefill_result_shapes(B, T, S, Nq, Nkv, D):
  """The prefill handler's outputs: o, lse and the V^T workspace its transpose kernel fills
  ([B, Nkv, D, Sp], Sp = S rounded up to 128; discarded)."""
  Sp = -(-S // VT_KEYS) * VT_KEYS
  return (jax.ShapeDtypeStruct((B, T, Nq, D), jnp.bfloat16),
          jax.ShapeDtypeStruct((B, T, Nq), jnp.float32),
          jax.ShapeDtypeStruct((B, Nkv, D, Sp), E4M3))


def _fail(msg):
  raise ValueError(f"jattn cuda_fp8: {msg}")


def attention(q, k, v, *, sm_scale, variant, q_lengths=None, kv_lengths=None, q_scale,
              k_scale, v_scale, interpret=False):
  """FP8 attention through the CUDA kernel. Scales are float32 [Nq], [Nkv], [Nkv]."""
  del interpret
  kind = _variant_kind(variant)
  if kind is None or q_lengths is not None or kv_lengths is not None:
    _fail("only causal / non-causal attention without lengths")
  for name, x in (("q", q), ("k", k), ("v", v)):
    if x.dtype != E4M3 or x.ndim != 4:
      _fail(f"{name} must be float8_e4m3fn of rank 4, got {x.dtype} {x.shape}")
  B, T, Nq, D = q.shape
  _, S, Nkv, _ = k.shape
  if D not in HEAD_DIMS or k.shape != (B, S, Nkv, D) or v.shape != (B, S, Nkv, D):
    _fail(f"shapes q {q.shape} k {k.shape} v {v.shape} (head_dim in {HEAD_DIMS}, Dv == D)")
  if Nq % Nkv:
    _fail(f"Nq {Nq} not a multiple of Nkv {Nkv}")
  for name, s, n in (("q_scale", q_scale, Nq), ("k_scale", k_scale, Nkv),
                     ("v_scale", v_scale, Nkv)):
    if s.shape != (n,) or s.dtype != jnp.float32:
      _fail(f"{name} must be float32 [{n}], got {s.dtype} {s.shape}")
  if not (sm_scale > 0 and math.isfinite(sm_scale)):
    _fail(f"sm_scale must be finite and > 0, got {sm_scale}")
  arch = device_arch()
  if arch is None:
    _fail("no sm_90a / sm_100a GPU")
  causal = kind == "causal"
  # JATTN_FP8_MMA=sync runs the portable mma.sync path on sm_90a too (for testing).
  wgmma = False if os.environ.get("JATTN_FP8_MMA") == "sync" else None
  name = _target(build.prefill_kernel(D, causal, arch, wgmma), arch)
  call = jax.ffi.ffi_call(name, prefill_result_shapes(B, T, S, Nq, Nkv, D))
  o, lse, _ = call(q, k, v, q_scale, k_scale, v_scale, sm_scale=np.float32(sm_scale),
                   causal=causal)
  return o, lse


# ----------------------------------------------------------------------------- decode

def supports_decode(spec) -> Optional[str]:
  if spec.op != "decode":
    return f"no CUDA FP8 kernel for op {spec.op!r}"
  if jnp.dtype(spec.dtype) != jnp.dtype(jnp.bfloat16) or jnp.dtype(spec.kv_dtype) != E4M3:
    return (f"q {jnp.dtype(spec.dtype).name} / pages {jnp.dtype(spec.kv_dtype).name} "
            "(the CUDA kernel takes bfloat16 q and float8_e4m3fn pages)")
  if spec.head_dim not in HEAD_DIMS or spec.v_head_dim != spec.head_dim:
    return f"head_dim {spec.head_dim}/{spec.v_head_dim} (needs equal dims in {HEAD_DIMS})"
  group = spec.num_q_heads // spec.num_kv_heads
  max_group = 8 if spec.head_dim == 256 else 16
  if group > max_group:
    return f"query group {group} > {max_group} at head_dim {spec.head_dim}"
  if _variant_kind(spec.variant) != "none":
    return f"variant {spec.variant!r} (only plain decode)"
  if spec.batch > 65535 or spec.num_kv_heads > 65535:
    return "batch or kv heads > 65535"
  return _device_check()


def decode_splits(batch: int, kv_heads: int, max_len: int, sms: int = 132,
                  ctas_per_sm: int = 2):
  """(splits, tokens per split) minimizing waves x tokens per CTA (flash-decoding split
  of the keys; a split costs a combine pass, so a tie keeps fewer). Splits hold a
  multiple of 128 tokens: one chunk per warp, and whole stages of the TMA kernel."""
  slots = max(1, sms * ctas_per_sm)
  best = None
  for splits in range(1, max(1, max_len // 128) + 1):
    per = -(-(-(-max_len // splits)) // 128) * 128
    cost = -(-batch * kv_heads * splits // slots) * per * (1.0 if splits == 1 else 1.05)
    if best is None or cost < best[0]:
      best = (cost, splits, per)
  _, splits, per = best
  return -(-max_len // per), per


def decode(q, cache, page_table, kv_lens, *, sm_scale, variant, plan=None, interpret=False):
  """FP8-KV paged decode through the CUDA kernel (bf16 q, float8_e4m3fn pages)."""
  del plan, interpret
  if _variant_kind(variant) != "none":
    _fail("decode supports no variant")
  if q.dtype != jnp.bfloat16 or q.ndim != 3:
    _fail(f"q must be bfloat16 [B, Nq, D], got {q.dtype} {q.shape}")
  kp, vp = cache.k_pages, cache.v_pages
  if kp.dtype != E4M3 or vp.dtype != E4M3 or kp.shape != vp.shape:
    _fail(f"pages must be float8_e4m3fn of one shape, got {kp.dtype} {kp.shape}, "
          f"{vp.dtype} {vp.shape}")
  B, Nq, D = q.shape
  P, ps, Nkv, Dk = kp.shape
  if Dk != D or D not in HEAD_DIMS or Nq % Nkv or Nq // Nkv > (8 if D == 256 else 16):
    _fail(f"q {q.shape} vs pages {kp.shape}")
  if page_table.dtype != jnp.int32 or page_table.ndim != 2 or page_table.shape[0] != B:
    _fail(f"page_table must be int32 [B, M], got {page_table.dtype} {page_table.shape}")
  if kv_lens.dtype != jnp.int32 or kv_lens.shape != (B,):
    _fail(f"kv_lens must be int32 [B], got {kv_lens.dtype} {kv_lens.shape}")
  if not (sm_scale > 0 and math.isfinite(sm_scale)):
    _fail(f"sm_scale must be finite and > 0, got {sm_scale}")
  arch = device_arch()
  if arch is None:
    _fail("no sm_90a / sm_100a GPU")
  sms = getattr(jax.devices("gpu")[0], "core_count", 132)
  group = Nq // Nkv
  ctas_per_sm = 4 if D * (1 if group <= 8 else 2) <= 64 else 2  # by register use
  splits, split_tokens = decode_splits(B, Nkv, page_table.shape[1] * ps, sms, ctas_per_sm)
  name = _target(build.decode_kernel(D, Nq // Nkv), arch)
  call = jax.ffi.ffi_call(name, (jax.ShapeDtypeStruct((B, Nq, D), jnp.bfloat16),
                                 jax.ShapeDtypeStruct((B, Nq), jnp.float32),
                                 jax.ShapeDtypeStruct((B, Nq, splits, D), jnp.float32),
                                 jax.ShapeDtypeStruct((B, Nq, splits), jnp.float32)))
  o, lse, _, _ = call(q, kp, vp, cache.k_scale.astype(jnp.float32),
                      cache.v_scale.astype(jnp.float32), page_table, kv_lens,
                      sm_scale=np.float32(sm_scale), splits=np.int64(splits),
                      split_tokens=np.int64(split_tokens))
  return o, lse
