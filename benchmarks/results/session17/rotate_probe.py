"""Session 17, call 7: the prefill's consumer step rotated (`prefill.ROTATED`).

Before: a consumer's turn on the tensor cores is P_j V_j, a wait for it, the loop's
overhead and K_{j+1}'s barrier, then S_{j+1} = Q K_{j+1}^T, handed over at issue. Rotated:
S_j comes in the carry, and the turn issues P_j V_j and S_{j+1} back to back under one
wait (K_{j+1}'s barrier waited between the two issues), so the tensor cores get both
products without the round trip between them. Prediction: 1-4 % faster on the causal
shapes (a wgmma round trip and the loop overhead per step, ~100-200 of ~1300 cycles);
more at D64 (shorter steps), least at D256 (64-key tiles, most registers: spills would
show as a loss).

Rows per shape (interleaved rounds, device clock beside): rotated, base, cuDNN, tokamax
mosaic. Checks: each jattn row against the float32 reference on the same inputs.

  PYTHONPATH=.:$TOKAMAX_SITE python3 benchmarks/results/session17/rotate_probe.py OUT [ROUNDS]
"""

import contextlib
import hashlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import impls  # noqa: F401  (tokamax import helper)
from benchmarks.impls import import_tokamax
from benchmarks.timing import bench, device_span, log, more_rounds
from jattn import reference, variants as V
from jattn.pallas import prefill as P

SHAPES = ((4, 4096, 32, 32, 128), (1, 8192, 32, 32, 128), (4, 4096, 32, 8, 128),
          (4, 4096, 32, 32, 64), (4, 4096, 16, 16, 256))


@contextlib.contextmanager
def rotated(on):
  old = P.ROTATED
  P.ROTATED = on
  jax.clear_caches()   # jattn's kernels are traced once per signature otherwise
  try:
    yield
  finally:
    P.ROTATED = old


def main(out, rounds):
  res, timed = {}, []
  tk, why = import_tokamax()
  if tk is None:
    log("tokamax:", why)
  c = V.causal()
  for B, T, Nq, Nkv, D in SHAPES:
    ks = jax.random.split(jax.random.key(B * T + D), 3)
    q = jax.random.normal(ks[0], (B, T, Nq, D), jnp.float32).astype(jnp.bfloat16)
    k = jax.random.normal(ks[1], (B, T, Nkv, D), jnp.float32).astype(jnp.bfloat16)
    v = jax.random.normal(ks[2], (B, T, Nkv, D), jnp.float32).astype(jnp.bfloat16)
    args = [(q, k, v)]
    flops = 2 * B * Nq * T * T * D
    name = f"B{B} T{T} H{Nq}/{Nkv} D{D}"
    f = lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=c, q_lengths=None,
                                    kv_lengths=None)[0]
    rows, hashes = [], set()
    ref = np.asarray(jax.jit(lambda q, k, v: reference.attention(
        q[:1].astype(jnp.float32), k[:1].astype(jnp.float32), v[:1].astype(jnp.float32),
        sm_scale=D ** -0.5, variant=c)[0])(q, k, v))
    for label, on in (("rotated", True), ("base", False)):
      with rotated(on):
        try:
          comp = jax.jit(f).lower(q, k, v).compile()
        except Exception as e:  # noqa: BLE001
          log(f"{name} {label}: does not compile: {type(e).__name__}: {str(e)[:400]}")
          continue
      h = hashlib.sha1(comp.as_text().encode()).hexdigest()
      assert h not in hashes, f"{label}: the same executable as another row"
      hashes.add(h)
      o = np.asarray(comp(q, k, v)[:1], np.float32)
      err = float(np.linalg.norm(o - ref) / np.linalg.norm(ref))
      log(f"{name} {label}: rel err vs float32 reference {err:.2e}")
      assert err < 2e-2, (name, label, err)
      rows.append((label, comp, args))
    rows.append(("cudnn", jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn")), args))
    if tk is not None:
      rows.append(("tokamax mosaic", jax.jit(lambda q, k, v: tk.dot_product_attention(
          q, k, v, is_causal=True, implementation="mosaic")), args))
    for label, fn, a in rows:
      key = f"{name} {label}"
      try:
        t = bench(fn, a)
        span = device_span(fn, a, calls=20)
      except Exception as e:  # noqa: BLE001
        log(f"{key}: {type(e).__name__}: {str(e)[:300]}")
        continue
      r = res[key] = dict(ms_rounds=[t.median_s * 1e3], flops=flops,
                          kernel_us=round(max(span["by_kernel"].values()) * 1e6, 1),
                          span_us=round(span["span_s"] * 1e6, 1))
      timed.append((r, fn, a))
      log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, rounds, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    r["tflops"] = r["flops"] / r["ms"] / 1e9
    log(f"{key:36s} {r['ms']:.4f} ms {r['tflops']:5.0f} TFLOP/s  span {r['span_us']} us "
        f"rounds {', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/rotate_probe.json", "w") as fh:
    json.dump(res, fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
