"""The "xla_fp8" implementation: float8 attention as dequantize + `jattn.reference`.

Serves float8 inputs wherever the CUDA FP8 kernels cannot (no sm_90a/sm_100a GPU, no
nvcc, or a shape or variant they lack); the dispatcher logs why it was chosen.
"""

from typing import Optional

import jax.numpy as jnp

from jattn import reference
from jattn.cache import is_float8


def supports(spec) -> Optional[str]:
  if not (is_float8(spec.dtype) or is_float8(spec.kv_dtype)):
    return "inputs are not float8"
  return None


def attention(q, k, v, *, sm_scale, variant, q_lengths, kv_lengths, q_scale, k_scale,
              v_scale, interpret=False):
  o, lse = reference.attention_fp8(q, k, v, q_scale, k_scale, v_scale, sm_scale=sm_scale,
                                   variant=variant, q_lengths=q_lengths, kv_lengths=kv_lengths)
  return o.astype(jnp.bfloat16), lse.astype(jnp.float32)
