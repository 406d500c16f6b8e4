"""Session 14: one float8 prefill call in which Q slots are reused (more tiles than SMs,
so a CTA's end-of-work index lands in a slot it used before), for compute-sanitizer
racecheck: does the D256 tile-slot report (its one slot is always reused) also show at
D128 once slots are reused?

  compute-sanitizer --tool racecheck --kernel-name kns=jattn \
      python3 benchmarks/results/session14/sanitize_reuse.py D T NQ
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from jattn import reference, variants as V
from jattn.bench.definitions import rel_err

F8 = jnp.float8_e4m3fn
D, T, Nq = (int(x) for x in sys.argv[1:4])
rng = np.random.default_rng(0)
r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(F8)
q, k, v = r(1, T, Nq, D), r(1, T, 1, D), r(1, T, 1, D)
o = jattn.attention(q, k, v, causal=True, implementation="cuda")
one = lambda n: jnp.ones((n,), jnp.float32)
ref = reference.attention_fp8(q, k, v, one(Nq), one(1), one(1), sm_scale=D ** -0.5,
                              variant=V.causal())[0]
print(f"D{D} T{T} Nq{Nq}: {Nq * -(-T // 128)} tiles, rel err {rel_err(o, ref):.3e}", flush=True)
