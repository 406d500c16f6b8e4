"""GPU probe for the block-sparse Pallas kernel (jattn.pallas.block_sparse): compiled
checks against the reference, then the harness's three density workloads timed next to
`jattn.attention` dense non-causal on the Pallas kernel at the same shape, in one process.

  PYTHONPATH=. python3 -m benchmarks.block_sparse_probe [--out DIR] [--deadline S]

Workloads `block_sparse_t8192_h32_d128_b64_density{0.1,0.3,0.5}`: B=1, T=S=8192, 32 heads
(q and kv), D=128, bf16, 64x64 blocks, non-causal. Density generator:
`jattn.block_sparse.random_layout(32, 8192, 8192, 64, density, seed=0)`: per head and per
block row exactly round(density * 128) distinct key blocks drawn uniformly (13, 38, 64
blocks: real densities 0.1016, 0.2969, 0.5). The layout is a jit argument, so the
per-call tile-list build (jnp, `tile_lists`) is inside the timed call; it is also timed
alone, and calls with a plan made once (`jattn.plan_block_sparse`) time the kernel alone,
also with one CTA per item (`Config(persistent=False)`; the default grid is persistent). Dense FLOPs = 4 B N T S D;
a block-sparse row's FLOPs are that times its real density (x 3.5 for fwd+bwd).
Timing: `benchmarks.timing.bench` (median of 7 repetitions of <= 20 calls), the median
of `--rounds` interleaved rounds.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks.timing import bench, log, more_rounds, probe_results, write_probe
from jattn.bench.definitions import rel_err
from jattn import block_sparse as bs, reference, variants as V
from jattn.pallas import block_sparse as PB, prefill as P

T0 = time.time()


def rand(key, shape, dtype=jnp.bfloat16):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def check(B, T, S, Nq, Nkv, D, heads, block, density, var, grad):
  ks = jax.random.split(jax.random.key(T + S + heads), 4)
  q, k, v = rand(ks[0], (B, T, Nq, D)), rand(ks[1], (B, S, Nkv, D)), rand(ks[2], (B, S, Nkv, D))
  lay = bs.random_layout(heads, T, S, block, density, seed=1)
  m = np.array(lay.block_mask)
  m[:, 1:2] = False                                   # an empty block row (if T > 64)
  lay = bs.from_dense(m, (block, block))
  f = jax.jit(lambda q, k, v, lay: jattn.block_sparse_attention(q, k, v, lay, variant=var,
                                                                return_lse=True))
  o, lse = f(q, k, v, lay)
  row = dict(chosen=jattn.dispatch.chosen("block_sparse_attention"))
  up = lambda *a: [x.astype(jnp.float32) for x in a]
  ro, rl = jax.jit(lambda q, k, v, lay: reference.block_sparse_attention(
      *up(q, k, v), lay, sm_scale=D ** -0.5, variant=var))(q, k, v, lay)
  fin = np.isfinite(np.asarray(rl))
  row.update(out_rel=rel_err(o, ro), lse_abs=float(np.max(np.abs(np.asarray(lse)[fin] - np.asarray(rl)[fin]))),
             lse_inf_match=bool(np.array_equal(np.isneginf(np.asarray(lse)), ~fin)))
  if grad:
    do = rand(ks[3], o.shape, jnp.float32)
    g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jattn.block_sparse_attention(
        q, k, v, lay, variant=var).astype(jnp.float32) * do), argnums=(0, 1, 2)))(q, k, v)
    rg = jax.jit(jax.grad(lambda q, k, v: jnp.sum(reference.block_sparse_attention(
        q, k, v, lay, sm_scale=D ** -0.5, variant=var)[0] * do), argnums=(0, 1, 2)))(*up(q, k, v))
    row.update({f"d{n}_rel": rel_err(a, b) for n, a, b in zip("qkv", g, rg)})
  return row


CHECKS = [
    # name, (B, T, S, Nq, Nkv, D, layout heads, block, density), variant, grad
    ("shared_gqa_causal", (2, 1000, 1200, 8, 2, 128, 1, 64, 0.4), V.causal(), True),
    ("per_head_d64_softcap", (1, 512, 768, 4, 4, 64, 4, 128, 0.5), V.soft_cap(10.0), True),
    ("decode_t1", (4, 1, 4096, 8, 8, 128, 8, 64, 0.3), None, False),
]


def run_checks(results):
  for name, shape, var, grad in CHECKS:
    try:
      row = dict(check=name, **check(*shape, var, grad))
    except Exception as e:  # noqa: BLE001
      traceback.print_exc()
      row = dict(check=name, error=f"{type(e).__name__}: {str(e)[:500]}")
    log("check", row)
    results["checks"].append(row)


def run_timing(results, deadline, only=None, rounds=1):
  """Time the selected rows; with rounds > 1, in interleaved rounds (A B C A B C ...:
  `benchmarks.timing.more_rounds`), each row's ms the median of its rounds."""
  B, T, Nq, D = 1, 8192, 32, 128
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (rand(kk, (B, T, Nq, D)) for kk in ks)
  flops = 4 * B * Nq * T * T * D
  rows = []

  def dense(cfg):
    return jax.jit(lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=V.Variant(),
                                               q_lengths=None, kv_lengths=None, config=cfg)[0])

  # (label, density, make) with make() -> (fn, args, FLOPs as a fraction of dense fwd)
  rows.append(("dense jattn.attention[pallas]", None,
               lambda: (jax.jit(lambda q, k, v: jattn.attention(q, k, v, implementation="pallas")),
                        (q, k, v), 1.0)))
  rows.append(("dense pallas block_kv=64", None,
               lambda: (dense(P.Config(block_kv=64)), (q, k, v), 1.0)))
  rows.append(("dense pallas persistent", None,
               lambda: (dense(P.Config(persistent=True)), (q, k, v), 1.0)))
  rows.append(("dense pallas persistent block_kv=64", None,
               lambda: (dense(P.Config(block_kv=64, persistent=True)), (q, k, v), 1.0)))
  per_call = jax.jit(lambda q, k, v, lay: jattn.block_sparse_attention(q, k, v, lay))
  planned = jax.jit(lambda q, k, v, lay, plan: jattn.block_sparse_attention(
      q, k, v, lay, plan=plan))

  def kernel(cfg):   # the kernel alone (plan given) with a chosen config
    return jax.jit(lambda q, k, v, lay, plan: PB.block_sparse_attention(
        q, k, v, lay, sm_scale=D ** -0.5, variant=V.Variant(), plan=plan, config=cfg)[0])

  for d in (0.1, 0.3, 0.5):
    lay = bs.random_layout(Nq, T, T, 64, d, seed=0)
    plan = jattn.plan_block_sparse(lay, T, T)
    real = float(np.asarray(lay.block_mask).mean())
    rows.append((f"block_sparse density{d}", d,
                 lambda lay=lay, real=real: (per_call, (q, k, v, lay), real)))
    rows.append((f"block_sparse density{d} plan", d,
                 lambda lay=lay, plan=plan, real=real: (planned, (q, k, v, lay, plan), real)))
    rows.append((f"block_sparse density{d} plan one CTA per item", d,
                 lambda lay=lay, plan=plan, real=real: (
                     kernel(PB.Config(persistent=False)), (q, k, v, lay, plan), real)))
  # Every tile listed: the sparse kernel's 64-key steps at the dense kernel's FLOPs, to
  # split the density-0.1 ratio into the step's cost and what sparsity adds (both q
  # tiles of a CTA list every tile, so every step is shared: half the bytes of 0.1's).
  full = bs.random_layout(Nq, T, T, 64, 1.0, seed=0)
  rows.append(("block_sparse density1.0 plan", 1.0, lambda: (
      planned, (q, k, v, full, jattn.plan_block_sparse(full, T, T)), 1.0)))
  # The same FLOPs and steps as density 0.1, half the bytes: 128-row blocks give both q
  # tiles of a CTA the same 13 key tiles, so every step loads one K and one V tile that
  # both consumers read (the 64-row layout's steps load one per consumer).
  pairs = bs.from_dense(np.asarray(bs.random_layout(Nq, T, T, 64, 0.1, seed=0).block_mask)[:, ::2],
                        (128, 64))
  rows.append(("block_sparse density0.1 plan pairs share", 0.1, lambda: (
      planned, (q, k, v, pairs, jattn.plan_block_sparse(pairs, T, T)),
      float(np.asarray(pairs.block_mask).mean()))))
  lay = bs.random_layout(Nq, T, T, 64, 0.1, seed=0)
  rows.append(("tile_lists alone (density0.1)", 0.1, lambda: (
      jax.jit(lambda lay: PB.tile_lists(lay, T, T, V.Variant())[0]), (lay,), None)))
  do = rand(jax.random.key(9), (B, T, Nq, D))
  rows.append(("fwd+bwd dense jattn.attention", None, lambda: (
      jax.jit(lambda q, k, v: jax.vjp(lambda *a: jattn.attention(*a), q, k, v)[1](do)),
      (q, k, v), 3.5)))
  rows.append(("fwd+bwd block_sparse density0.1 plan", 0.1, lambda: (
      jax.jit(lambda q, k, v, lay, plan: jax.vjp(
          lambda *a: jattn.block_sparse_attention(*a, lay, plan=plan), q, k, v)[1](do)),
      (q, k, v, lay, jattn.plan_block_sparse(lay, T, T)),
      3.5 * float(np.asarray(lay.block_mask).mean()))))

  made = []
  for label, d, make in rows:
    if only and not any(label == pat or fnmatch.fnmatch(label, pat) for pat in only.split(",")):
      continue
    if time.time() - T0 > deadline:
      log("deadline reached; skipping", label)
      continue
    try:
      fn, args, frac = make()
      t = bench(fn, [args])
      real = None if d is None else float(np.asarray(
          bs.random_layout(Nq, T, T, 64, d, seed=0).block_mask).mean())
      row = dict(impl=label, density=d, ms=t.median_s * 1e3, spread=t.spread,
                 compile_s=t.compile_s, real_density=real, ms_rounds=[t.median_s * 1e3])
      made.append((row, fn, [args], frac))
    except Exception as e:  # noqa: BLE001
      traceback.print_exc()
      row = dict(impl=label, error=f"{type(e).__name__}: {str(e)[:600]}")
    log("time", row)
    results["timing"].append(row)
  more_rounds([m[:3] for m in made], rounds, lambda fn, a: bench(fn, a).median_s * 1e3,
              keep_going=lambda: time.time() - T0 < deadline)
  for row, _, _, frac in made:
    row["tflops"] = flops * frac / row["ms"] / 1e9 if frac else None
  by = {r["impl"]: r for r in results["timing"] if "ms" in r}
  base = by.get("dense jattn.attention[pallas]")
  if base:
    for r in results["timing"]:
      if "ms" in r and r.get("real_density") and r["impl"].startswith("block_sparse"):
        r["speedup_vs_dense"] = base["ms"] / r["ms"]
        r["ratio_to_density_x_dense"] = r["ms"] / (r["real_density"] * base["ms"])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--deadline", type=float, default=200.0)
  ap.add_argument("--no-checks", action="store_true")
  ap.add_argument("--rows", default=None, help="comma-separated row names or fnmatch patterns "
                  "(a name is matched as written: `[pallas]` is not a character class)")
  ap.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds")
  args = ap.parse_args()
  results = probe_results()
  if not args.no_checks:
    run_checks(results)
  run_timing(results, args.deadline, args.rows, args.rounds)
  write_probe(results, os.path.join(args.out, "block_sparse_probe.json"), _timing_line)


def _timing_line(r) -> str:
  if "error" in r:
    return f"{r['impl']:36s} ERROR {r['error'][:300]}"
  extra = "".join(f" {k}={r[k]:.3f}" for k in ("tflops", "speedup_vs_dense",
                                                 "ratio_to_density_x_dense") if r.get(k))
  return f"{r['impl']:36s} {r['ms']:8.3f} ms{extra}"


if __name__ == "__main__":
  main()
