"""A small Llama-style decoder in Flax NNX on jattn: RMSNorm, RoPE, GQA, SwiGLU, tied
embeddings, random weights from a seed (no checkpoint).

One set of weights runs four ways:
  `__call__`       dense causal forward over padded [B, T] tokens (jattn.attention, or
                   implementation="jax.nn" for jax.nn.dot_product_attention: the check);
  `prefill`        packed tokens, K/V appended to paged caches, jattn.prefill;
  `decode`         one token per sequence, K/V appended, jattn.decode;
  `prefill_dense` / `decode_dense`  the same serving steps over dense [B, max_len]
                   caches on jax.nn.dot_product_attention (the serving baseline).
Caches are lists (one per layer) passed in and returned, so a jitted step can donate them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

import jattn
from jattn.flax import JAX_NN, Attention, Impl

__all__ = ["LlamaConfig", "CONFIGS", "Llama"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int = 256
  dim: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 16
  ffn_dim: int = 176
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  sliding_window: Optional[int] = None
  logits_soft_cap: Optional[float] = None
  dtype: str = "float32"          # weights, activations and KV cache


CONFIGS = {
    "tiny": LlamaConfig(),
    # Llama-3.2-1B shapes (1.24 B parameters).
    "1b": LlamaConfig(vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                      head_dim=64, ffn_dim=8192, rope_theta=500000.0, dtype="bfloat16"),
}


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * w, computed in float32."""

  def __init__(self, dim: int, eps: float, dtype):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), dtype))

  def __call__(self, x):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * self.weight[...].astype(jnp.float32)).astype(x.dtype)


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, dtype, rngs: nnx.Rngs):
    def linear(a, b):
      return nnx.Linear(a, b, use_bias=False, dtype=dtype, param_dtype=dtype, rngs=rngs)
    self.gate, self.up, self.down = linear(dim, hidden), linear(dim, hidden), linear(hidden, dim)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.dtype)
    self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps, dt)
    self.attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                          rope_theta=cfg.rope_theta, sliding_window=cfg.sliding_window,
                          logits_soft_cap=cfg.logits_soft_cap, dtype=dt, param_dtype=dt,
                          rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps, dt)
    self.mlp = SwiGLU(cfg.dim, cfg.ffn_dim, dt, rngs)

  def mlp_residual(self, h):
    return h + self.mlp(self.mlp_norm(h))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _normal(key, shape, dtype, scale):
  return (jax.random.normal(key, shape, jnp.float32) * scale).astype(dtype)


class Llama(nnx.Module):
  """Decoder-only transformer. Logits are float32."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = jnp.dtype(cfg.dtype)
    self.embed = nnx.Embed(cfg.vocab_size, cfg.dim, dtype=dt, param_dtype=dt, rngs=rngs)
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.norm = RMSNorm(cfg.dim, cfg.norm_eps, dt)

  @classmethod
  def from_seed(cls, cfg: LlamaConfig, seed: int = 0) -> "Llama":
    """Random weights from `seed`: matrices ~ N(0, 1/fan_in) (the embedding:
    N(0, 1/dim)), norm weights 1. One small jitted draw per distinct weight shape, reused
    by every layer (one jit over all 1B-class weights compiles for minutes on a GPU)."""
    graphdef, shapes = nnx.split(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    key = jax.random.key(seed, impl="rbg")
    out = []
    for i, (path, x) in enumerate(leaves):
      names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
      if "weight" in names:                         # RMSNorm
        out.append(jnp.ones(x.shape, x.dtype))
        continue
      fan_in = x.shape[1] if "embedding" in names else x.shape[0]
      out.append(_normal(jax.random.fold_in(key, i), x.shape, jnp.dtype(x.dtype),
                         1.0 / fan_in ** 0.5))
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, out))

  def _logits(self, h):
    return self.embed.attend(self.norm(h)).astype(jnp.float32)

  # ---------------------------------------------------------------- dense (no cache)

  def __call__(self, tokens, lengths=None, *, implementation: Impl = None):
    """tokens int32 [B, T] at positions 0..T-1, `lengths` [B] valid prefixes (causal).
    Returns logits [B, T, V]."""
    h = self.embed(tokens)
    for blk in self.layers:
      h = h + blk.attn(blk.attn_norm(h), lengths=lengths, implementation=implementation)
      h = blk.mlp_residual(h)
    return self._logits(h)

  # ---------------------------------------------------------------- paged cache (jattn)

  def init_paged_caches(self, num_pages: int, page_size: int) -> list:
    c = self.cfg
    return [jattn.PagedKVCache.create(num_pages, page_size, c.n_kv_heads, c.head_dim,
                                      dtype=jnp.dtype(c.dtype)) for _ in range(c.n_layers)]

  def prefill(self, tokens, positions, caches, page_table, seq_ids, kv_lens, q_offsets, *,
              logits_rows=None, implementation: Impl = None):
    """Packed prefill: tokens/positions/seq_ids [Tq] (seq_ids -1 = padding), sequence b
    owns rows q_offsets[b]:q_offsets[b+1], the last of its kv_lens[b] tokens. Returns
    (logits [R, V] for rows `logits_rows` [R] (default: all rows), caches)."""
    h = self.embed(tokens)
    new = []
    for blk, cache in zip(self.layers, caches):
      a, cache = blk.attn.prefill(blk.attn_norm(h), positions, cache, page_table, seq_ids,
                                  kv_lens, q_offsets, implementation=implementation)
      h = blk.mlp_residual(h + a)
      new.append(cache)
    if logits_rows is not None:
      h = h[logits_rows]
    return self._logits(h), new

  def decode(self, tokens, caches, page_table, kv_lens, *, plan=None,
             implementation: Impl = None):
    """tokens [B] at positions kv_lens - 1 (kv_lens 0 = idle row). Returns
    (logits [B, V], caches)."""
    h = self.embed(tokens)
    new = []
    for blk, cache in zip(self.layers, caches):
      a, cache = blk.attn.decode(blk.attn_norm(h), cache, page_table, kv_lens, plan=plan,
                                 implementation=implementation)
      h = blk.mlp_residual(h + a)
      new.append(cache)
    return self._logits(h), new

  # ---------------------------------------------------------------- dense cache (jax.nn)

  def init_dense_caches(self, batch: int, max_len: int) -> list:
    c = self.cfg
    shape = (batch, max_len, c.n_kv_heads, c.head_dim)
    return [(jnp.zeros(shape, c.dtype), jnp.zeros(shape, c.dtype)) for _ in range(c.n_layers)]

  def prefill_dense(self, tokens, lengths, kvs, slots, *, implementation: str = JAX_NN):
    """Fresh prompts tokens [N, T] (padded), lengths [N], written to cache rows `slots`
    (out of range: dropped). Returns (logits of each prompt's last token [N, V], kvs)."""
    h = self.embed(tokens)
    new = []
    for blk, kv in zip(self.layers, kvs):
      a, kv = blk.attn.prefill_dense(blk.attn_norm(h), lengths, kv, slots,
                                     implementation=implementation)
      h = blk.mlp_residual(h + a)
      new.append(kv)
    last = jnp.take_along_axis(h, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)[:, 0]
    return self._logits(last), new

  def decode_dense(self, tokens, kvs, kv_lens, *, implementation: str = JAX_NN):
    """Like `decode` over dense caches [B, max_len, Nkv, D]."""
    h = self.embed(tokens)
    new = []
    for blk, kv in zip(self.layers, kvs):
      a, kv = blk.attn.decode_dense(blk.attn_norm(h), kv, kv_lens,
                                    implementation=implementation)
      h = blk.mlp_residual(h + a)
      new.append(kv)
    return self._logits(h), new
