"""Session 17, call 8: Nsight Compute beside cuDNN for the bf16 paged decode (B32 S4096
GQA 32/8 D128, pages of 16): the Pallas kernel on the harness's shuffled page table and
on the identity table (call 5: 182.9 vs 180.2 µs), and cuDNN's dense decode, two calls
each. Question: does the shuffled table cost DRAM bytes (more sectors read than the
537 MB of K and V) or only DRAM efficiency (the same bytes, a lower rate)?

  ncu -k regex:'mosaic|sdpa' --metrics ... python3 benchmarks/results/session17/ncu_decode_bf16.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks import impls, workloads as W


def main():
  wl = next(w for w in W.STANDARD if w.name == "decode_gqa32x8_b32_s4096_d128_p16")
  data = impls.Data(wl)
  p = data.paged[0]
  plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                           wl.num_kv_heads, wl.head_dim)
  f = jax.jit(lambda q, c, t, kl, plan: jattn.decode(q, c, t, kl, plan=plan,
                                                      implementation="pallas"))
  M = p["table"].shape[1]
  ident = jnp.arange(wl.batch * M, dtype=jnp.int32).reshape(wl.batch, M)
  cud = impls.cudnn(wl, data)
  for _ in range(2):
    jax.block_until_ready(f(p["q"], p["cache"], p["table"], p["kv_lens"], plan))   # shuffled
    jax.block_until_ready(f(p["q"], p["cache"], ident, p["kv_lens"], plan))        # identity
    jax.block_until_ready(cud.fn(*cud.args[0]))
  print("ncu bf16 decode: shuffled, identity, cudnn; two calls each", flush=True)


if __name__ == "__main__":
  main()
