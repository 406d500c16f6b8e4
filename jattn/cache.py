"""The paged KV cache: a pytree of page arrays plus optional float8 scales.

  k_pages [P, page_size, Nkv, D], v_pages [P, page_size, Nkv, Dv]
  k_scale, v_scale float32 [Nkv] (required when the pages are float8): the real value of
  a stored element is `pages[p, s, h, d] * scale[h]`.

A sequence owns a row of an int32 `page_table [B, max_pages]`: its token s is stored in
page `page_table[b, s // page_size]`, slot `s % page_size`. Pages may be shared between
sequences (prefix sharing) and need not be contiguous or ordered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

FLOAT8_DTYPES = (jnp.float8_e4m3fn, jnp.float8_e5m2)
PAGE_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32) + FLOAT8_DTYPES


def is_float8(dtype) -> bool:
  return any(jnp.dtype(dtype) == jnp.dtype(d) for d in FLOAT8_DTYPES)


def page_dtype_error(where: str, dtype) -> Optional[str]:
  """The message for pages of an unsupported dtype, or None."""
  if any(jnp.dtype(dtype) == jnp.dtype(d) for d in PAGE_DTYPES):
    return None
  return (f"{where} dtype {jnp.dtype(dtype)} not supported; use one of "
          f"{[jnp.dtype(d).name for d in PAGE_DTYPES]}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKVCache:
  k_pages: Any
  v_pages: Any
  k_scale: Optional[Any] = None
  v_scale: Optional[Any] = None

  @classmethod
  def create(cls, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
             dtype=jnp.bfloat16, v_head_dim: Optional[int] = None,
             k_scale=None, v_scale=None) -> "PagedKVCache":
    """Zero-filled cache. float8 `dtype` needs scales: pass `k_scale`/`v_scale` ([Nkv] or
    a scalar broadcast to every head); they default to 1.0 so that a cache is usable
    immediately, but real float8 data needs calibrated scales."""
    why = page_dtype_error("PagedKVCache.create:", dtype)
    if why is not None:
      raise TypeError(why)
    v_head_dim = head_dim if v_head_dim is None else v_head_dim
    k = jnp.zeros((num_pages, page_size, num_kv_heads, head_dim), dtype)
    v = jnp.zeros((num_pages, page_size, num_kv_heads, v_head_dim), dtype)
    if is_float8(dtype):
      def scale(s):
        s = 1.0 if s is None else s
        return jnp.broadcast_to(jnp.asarray(s, jnp.float32), (num_kv_heads,))
      return cls(k, v, scale(k_scale), scale(v_scale))
    if k_scale is not None or v_scale is not None:
      raise ValueError("PagedKVCache.create: scales are only meaningful for float8 pages")
    return cls(k, v)

  @property
  def num_pages(self) -> int:
    return self.k_pages.shape[0]

  @property
  def page_size(self) -> int:
    return self.k_pages.shape[1]

  @property
  def num_kv_heads(self) -> int:
    return self.k_pages.shape[2]

  @property
  def head_dim(self) -> int:
    return self.k_pages.shape[3]

  @property
  def v_head_dim(self) -> int:
    return self.v_pages.shape[3]

  @property
  def dtype(self):
    return self.k_pages.dtype

  def replace(self, **kw) -> "PagedKVCache":
    return dataclasses.replace(self, **kw)
