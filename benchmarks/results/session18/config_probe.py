"""Session 18, call 3: ring configs that fit once the forward reserves no cross-warp
reduction scratch (benchmarks/NOTES.md, "Session 18", call 3).

Each config against the default in one process, interleaved rounds, the device clock
beside (one 20-call sample): block-sparse 0.1 / 0.3 / 0.5 with 2 (default) and 3 stages
(plan given, kernel alone) next to the dense non-causal row; the causal shapes with the
default, D128 with 3 stages (persistent and one CTA per tile), D64 with 256-key tiles
(3 and 2 stages), cuDNN and tokamax mosaic. Checks: every jattn row against the float32
reference on the first rows.

  PYTHONPATH=.:$TOKAMAX_SITE python3 benchmarks/results/session18/config_probe.py OUT GROUP [ROUNDS]

GROUP: sparse, causal, d256 (call 4: head dim 256 persistent with one Q buffer, the
default, against one CTA per tile, tokamax's tuned H100 choice), or d64 (call 6: the new
256-key default at head dim 64 against the old 128-key one on other causal shapes; d64-noncausal
the same shapes without a mask).
"""

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

D128 = (P.Config(block_kv=128, num_stages=3, persistent=True),
        P.Config(block_kv=128, num_stages=3, persistent=False))
D64 = (P.Config(block_kv=256, num_stages=3, persistent=True),
       P.Config(block_kv=256, num_stages=2, persistent=True))
CAUSAL = (((4, 4096, 32, 32, 128), D128), ((1, 8192, 32, 32, 128), D128),
          ((4, 4096, 32, 8, 128), D128), ((4, 4096, 32, 32, 64), D64),
          ((4, 4096, 16, 16, 256), ()))
D256 = (((4, 4096, 16, 16, 256), (P.Config(block_kv=64, num_stages=2, persistent=False),)),)
OLD64 = (P.Config(block_kv=128, num_stages=3, persistent=True),)   # the default before call 3
D64_MORE = (((16, 1024, 32, 32, 64), OLD64), ((1, 8192, 32, 32, 64), OLD64),
            ((8, 2048, 32, 8, 64), OLD64), ((2, 512, 32, 32, 64), OLD64))


def rand(key, shape):
  return jax.random.normal(key, shape, jnp.float32).astype(jnp.bfloat16)


def checked(name, f, args, ref, rows, checks):
  comp = jax.jit(f).lower(*args).compile()
  o = np.asarray(comp(*args), np.float32)[tuple(slice(0, n) for n in ref.shape)]
  err = float(np.linalg.norm(o - ref) / np.linalg.norm(ref))
  log(f"{name}: rel err vs float32 reference {err:.2e}")
  assert err < 2e-2, (name, err)
  checks[name] = err
  rows.append((name, comp, [args]))


def sparse_rows(rows, checks):
  B, T, N, D = 1, 8192, 32, 128
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (rand(kk, (B, T, N, D)) for kk in ks)
  up = lambda x: x[:, :1024].astype(jnp.float32)
  f32 = lambda x: x.astype(jnp.float32)
  ref = np.asarray(reference.attention(up(q), f32(k), f32(v), sm_scale=D ** -0.5,
                                       variant=V.Variant())[0])
  checked("dense noncausal T8192 default", lambda q, k, v: P.attention(
      q, k, v, sm_scale=D ** -0.5, variant=V.Variant(), q_lengths=None,
      kv_lengths=None)[0], (q, k, v), ref, rows, checks)
  for d in (0.1, 0.3, 0.5):
    lay = bs.random_layout(N, T, T, 64, d, seed=0)
    plan = jattn.plan_block_sparse(lay, T, T)
    ref = np.asarray(reference.block_sparse_attention(
        up(q), f32(k), f32(v), bs.from_dense(np.asarray(lay.block_mask)[:, :16], (64, 64)),
        sm_scale=D ** -0.5, variant=V.Variant())[0])
    for st in (2, 3):
      f = lambda q, k, v, lay, plan, st=st: PB.block_sparse_attention(
          q, k, v, lay, sm_scale=D ** -0.5, variant=V.Variant(), plan=plan,
          config=PB.Config(num_stages=st))[0]
      checked(f"block_sparse {d} stages {st}", f, (q, k, v, lay, plan), ref, rows, checks)


def causal_rows(rows, checks, tk, shapes=CAUSAL, causal=True):
  c = V.causal() if causal else V.Variant()
  for (B, T, Nq, Nkv, D), cfgs in shapes:
    ks = jax.random.split(jax.random.key(B * T + D), 3)
    q = rand(ks[0], (B, T, Nq, D))
    k, v = rand(ks[1], (B, T, Nkv, D)), rand(ks[2], (B, T, Nkv, D))
    name = f"{'causal' if causal else 'noncausal'} B{B} T{T} H{Nq}/{Nkv} D{D}"
    up = lambda x: x[:1].astype(jnp.float32)
    ref = np.asarray(reference.attention(up(q), up(k), up(v), sm_scale=D ** -0.5,
                                         variant=c)[0])
    for cfg in (None,) + cfgs:
      label = "default" if cfg is None else (
          f"bkv{cfg.block_kv} st{cfg.num_stages} {'persistent' if cfg.persistent else 'per-tile'}")
      f = lambda q, k, v, cfg=cfg: P.attention(q, k, v, sm_scale=D ** -0.5, variant=c,
                                               q_lengths=None, kv_lengths=None, config=cfg)[0]
      checked(f"{name} {label}", f, (q, k, v), ref, rows, checks)
    rows.append((f"{name} cudnn", jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, implementation="cudnn")), [(q, k, v)]))
    if tk is not None:
      rows.append((f"{name} tokamax mosaic", jax.jit(lambda q, k, v: tk.dot_product_attention(
          q, k, v, is_causal=causal, implementation="mosaic")), [(q, k, v)]))


def main(out, group, rounds):
  rows, checks, res, timed = [], {}, {}, []
  log("device", jax.devices()[0].device_kind)
  if group == "sparse":
    sparse_rows(rows, checks)
  else:
    tk, why = import_tokamax()
    if tk is None:
      log("tokamax:", why)
    causal_rows(rows, checks, tk, {"d256": D256, "d64": D64_MORE, "d64-noncausal": D64_MORE}.get(group, CAUSAL),
                causal=group != "d64-noncausal")
  for key, fn, a in rows:
    try:
      t = bench(fn, a)
      span = device_span(fn, a, calls=20)
    except Exception as e:  # noqa: BLE001
      log(f"{key}: {type(e).__name__}: {str(e)[:300]}")
      continue
    r = res[key] = dict(ms_rounds=[t.median_s * 1e3],
                        kernel_us=round(max(span["by_kernel"].values()) * 1e6, 1))
    timed.append((r, fn, a))
    log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, rounds, lambda fn, a: bench(fn, a).median_s * 1e3)
  for key, r in res.items():
    log(f"{key:52s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us  "
        f"rounds {', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  with open(f"{out}/config_probe_{group}.json", "w") as fh:
    json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, checks=checks,
                   rows=res), fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5)
