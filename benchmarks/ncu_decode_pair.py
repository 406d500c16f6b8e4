"""Two calls each of cuDNN's bf16 dense decode and jattn's float8 CUDA decode at
B32 S4096 Hq32 Hkv8 D128 (pages of 16), for a side-by-side Nsight Compute profile:

  ncu -k regex:'jattn|sdpa|fmha|flash' --section SpeedOfLight \
      --section MemoryWorkloadAnalysis python3 -m benchmarks.ncu_decode_pair
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from jattn import reference


def main():
  B, S, Hq, Hkv, D, page = 32, 4096, 32, 8, 128, 16
  ks = jax.random.split(jax.random.key(0), 5)
  M = S // page
  q = jax.random.normal(ks[0], (B, Hq, D), jnp.float32).astype(jnp.bfloat16)
  k = jax.random.normal(ks[1], (B, S, Hkv, D), jnp.float32).astype(jnp.bfloat16)
  v = jax.random.normal(ks[2], (B, S, Hkv, D), jnp.float32).astype(jnp.bfloat16)
  sc = jnp.full((Hkv,), 1 / 64, jnp.float32)
  perm = np.random.default_rng(0).permutation(B * M)
  table = jnp.asarray(perm.reshape(B, M), jnp.int32)
  inv = jnp.asarray(np.argsort(perm), jnp.int32)
  pages = lambda x: reference.quantize(x.astype(jnp.float32).reshape(B * M, page, Hkv, D)[inv],
                                       sc, jnp.float8_e4m3fn)
  cache = jattn.PagedKVCache(pages(k), pages(v), sc, sc)
  lens = jnp.full((B,), S, jnp.int32)
  cud = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q[:, None], k, v,
                                                             implementation="cudnn"))
  f8 = jax.jit(lambda q, c, t, l: jattn.decode(q, c, t, l, implementation="cuda"))
  for _ in range(2):
    jax.block_until_ready(cud(q, k, v))
    jax.block_until_ready(f8(q, cache, table, lens))
  print("ncu decode pair: two calls each done", flush=True)


if __name__ == "__main__":
  main()
