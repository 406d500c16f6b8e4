"""Two calls each of the dense kernel and the block-sparse kernel (plan given) at density
0.1 and 0.5, B1 T8192 H32 D128 with 64x64 blocks (the harness workloads), for an Nsight
Compute profile of their L2 traffic:

  XLA_PYTHON_CLIENT_PREALLOCATE=false ncu -k regex:NAME --metrics gpu__time_duration.sum,\
lts__t_bytes.sum.per_second,lts__throughput.avg.pct_of_peak_sustained_elapsed,\
dram__throughput.avg.pct_of_peak_sustained_elapsed python3 -m benchmarks.ncu_block_sparse

Both settings matter. Without them ncu profiled every small XLA kernel of the setup and,
with JAX's preallocated pool, saved and restored most of the GPU memory for every replay
pass (~25 s per kernel): the first try ran out its 500 s before the attention kernels
(`results/ncu_block_sparse_h100_timeout.log`). NAME: the Mosaic GPU kernel's name, which
that try did not reach; `nsys profile --stats=true` lists the kernel names of a run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jattn
from jattn import block_sparse as bs


def main():
  B, T, Nq, D = 1, 8192, 32, 128
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(kk, (B, T, Nq, D), jnp.float32).astype(jnp.bfloat16)
             for kk in ks)
  dense = jax.jit(lambda q, k, v: jattn.attention(q, k, v))
  sparse = jax.jit(lambda q, k, v, lay, plan: jattn.block_sparse_attention(
      q, k, v, lay, plan=plan))
  lays = [bs.random_layout(Nq, T, T, 64, d, seed=0) for d in (0.1, 0.5)]
  plans = [jattn.plan_block_sparse(lay, T, T) for lay in lays]
  for _ in range(2):
    jax.block_until_ready(dense(q, k, v))
    for lay, plan in zip(lays, plans):
      jax.block_until_ready(sparse(q, k, v, lay, plan))
  print("ncu block-sparse: two calls each done", flush=True)


if __name__ == "__main__":
  main()
