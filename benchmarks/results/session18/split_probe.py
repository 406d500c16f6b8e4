"""Session 18, call 1: the forward producer refills K and V slots separately
(`prefill.SPLIT_REFILL`; benchmarks/NOTES.md, "Session 18").

Before: the producer waits for a ring slot's K and V to be free, then issues both copies.
Split: it waits for K's slot (free after both consumers' Q.K^T) and issues K, then waits
for V's (free after P.V) and issues V. Prediction: block-sparse 3-8 % faster (64-key
steps: the ring's lead is short in time); dense causal D128 0-2 %, D256 1-4 %, D64 and
the non-causal dense row +-1 %.

Rows per shape (interleaved rounds, the device clock beside): split, base, and for the
causal shapes cuDNN and tokamax mosaic. Checks: split and base give bit-identical outputs
(the same math; only when copies start differs), and one row per shape against the
float32 reference.

  PYTHONPATH=.:$TOKAMAX_SITE python3 benchmarks/results/session18/split_probe.py OUT GROUP [ROUNDS]

GROUP: sparse (block-sparse 0.1/0.3/0.5 with a plan, kernel alone, and the dense
non-causal row at the same shape) or causal (the five causal prefill shapes).
"""

import contextlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks.impls import import_tokamax
from benchmarks.timing import bench, device_span, log, more_rounds
from jattn import block_sparse as bs, reference, variants as V
from jattn.pallas import block_sparse as PB, prefill as P

CAUSAL = ((4, 4096, 32, 32, 128), (1, 8192, 32, 32, 128), (4, 4096, 32, 8, 128),
          (4, 4096, 32, 32, 64), (4, 4096, 16, 16, 256))


@contextlib.contextmanager
def split(on):
  old = P.SPLIT_REFILL
  P.SPLIT_REFILL = on
  jax.clear_caches()   # jattn's kernels are traced once per signature otherwise
  try:
    yield
  finally:
    P.SPLIT_REFILL = old


def rand(key, shape):
  return jax.random.normal(key, shape, jnp.float32).astype(jnp.bfloat16)


def ab_rows(name, f, args, ref_fn, rows):
  """Compile f under both switches; check bit-identity and one error; add the rows."""
  outs = {}
  for label, on in (("split", True), ("base", False)):
    with split(on):
      comp = jax.jit(f).lower(*args).compile()
    outs[label] = np.asarray(comp(*args), np.float32)
    rows.append((f"{name} {label}", comp, [args]))
  same = bool(np.array_equal(outs["split"], outs["base"]))
  ref = np.asarray(ref_fn(), np.float32)
  o = outs["split"][tuple(slice(0, n) for n in ref.shape)]   # the reference's rows
  err = float(np.linalg.norm(o - ref) / np.linalg.norm(ref))
  log(f"{name}: split == base bitwise: {same}; rel err vs float32 reference {err:.2e}")
  assert same and err < 2e-2, (name, same, err)
  return dict(bitwise_same=same, rel_err=err)


def sparse_rows(rows, checks):
  B, T, N, D = 1, 8192, 32, 128
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (rand(kk, (B, T, N, D)) for kk in ks)
  up = lambda x: x[:, :1024].astype(jnp.float32)   # reference on the first 1024 rows
  dense = lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=V.Variant(),
                                      q_lengths=None, kv_lengths=None)[0]
  checks["dense noncausal T8192"] = ab_rows(
      "dense noncausal T8192", dense, (q, k, v),
      lambda: reference.attention(up(q), k.astype(jnp.float32), v.astype(jnp.float32),
                                  sm_scale=D ** -0.5, variant=V.Variant())[0], rows)
  for d in (0.1, 0.3, 0.5):
    lay = bs.random_layout(N, T, T, 64, d, seed=0)
    plan = jattn.plan_block_sparse(lay, T, T)
    f = lambda q, k, v, lay, plan: PB.block_sparse_attention(
        q, k, v, lay, sm_scale=D ** -0.5, variant=V.Variant(), plan=plan)[0]
    m = np.asarray(lay.block_mask)[:, :16]           # the first 1024 rows' block rows
    lay_ref = bs.from_dense(m, (64, 64))
    checks[f"block_sparse {d}"] = ab_rows(
        f"block_sparse {d}", f, (q, k, v, lay, plan),
        lambda: reference.block_sparse_attention(
            up(q), k.astype(jnp.float32), v.astype(jnp.float32), lay_ref,
            sm_scale=D ** -0.5, variant=V.Variant())[0], rows)


def causal_rows(rows, checks, tk):
  c = V.causal()
  for B, T, Nq, Nkv, D in CAUSAL:
    ks = jax.random.split(jax.random.key(B * T + D), 3)
    q = rand(ks[0], (B, T, Nq, D))
    k, v = rand(ks[1], (B, T, Nkv, D)), rand(ks[2], (B, T, Nkv, D))
    name = f"causal B{B} T{T} H{Nq}/{Nkv} D{D}"
    f = lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=c, q_lengths=None,
                                    kv_lengths=None)[0]
    up = lambda x: x[:1].astype(jnp.float32)
    checks[name] = ab_rows(name, f, (q, k, v), lambda: reference.attention(
        up(q), up(k), up(v), sm_scale=D ** -0.5, variant=c)[0], rows)
    rows.append((f"{name} cudnn", jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn")), [(q, k, v)]))
    if tk is not None:
      rows.append((f"{name} tokamax mosaic", jax.jit(lambda q, k, v: tk.dot_product_attention(
          q, k, v, is_causal=True, implementation="mosaic")), [(q, k, v)]))


def main(out, group, rounds):
  rows, checks, res, timed = [], {}, {}, []
  log("device", jax.devices()[0].device_kind)
  if group == "sparse":
    sparse_rows(rows, checks)
  else:
    tk, why = import_tokamax()
    if tk is None:
      log("tokamax:", why)
    causal_rows(rows, checks, tk)
  for key, fn, a in rows:
    try:
      t = bench(fn, a)
      span = device_span(fn, a, calls=20)
    except Exception as e:  # noqa: BLE001
      log(f"{key}: {type(e).__name__}: {str(e)[:300]}")
      continue
    r = res[key] = dict(ms_rounds=[t.median_s * 1e3],
                        kernel_us=round(max(span["by_kernel"].values()) * 1e6, 1),
                        span_us=round(span["span_s"] * 1e6, 1))
    timed.append((r, fn, a))
    log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, rounds, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    log(f"{key:44s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us  "
        f"rounds {', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/split_probe_{group}.json", "w") as fh:
    json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, checks=checks,
                   rows=res), fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5)
