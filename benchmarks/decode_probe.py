"""Probe for the Pallas paged decode kernel: compiled correctness, then GB/s next to its
peers in the same process (cuDNN dense decode, jax's Pallas paged_attention, the device
copy). Bytes = K + V read once (the keys actually attended for skewed lengths).

  python -m benchmarks.decode_probe [--out DIR] [--skip-check] [--checks PATTERN]
      [--only WORKLOADS] [--rows 'LABEL;LABEL'] [--rounds N] [--reps N]

`--rounds N` times every selected row once, then N - 1 more times in turn (a row's ms is
the median of its rounds), for A/B comparisons below the ~5 % drift between runs.

The full harness is `benchmarks.run`; this script is the kernel's own quick look.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import json
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from jattn import reference, variants as V
from jattn.pallas import decode as pd
from jattn.pallas import merge as pm
from benchmarks.timing import bench, more_rounds
from jattn.bench.definitions import rel_err
from benchmarks.workloads import skewed_lengths

INTERPRET = jax.default_backend() != "gpu"   # a CPU dry run (use --tiny) interprets


def random_cache(key, B, max_len, Nkv, D, Dv, ps, dtype, extra_pages=7):
  """Shuffled pages holding random data; page table [B, ceil(max_len/ps)]."""
  M = -(-max_len // ps)
  P = B * M + extra_pages
  k1, k2, k3 = jax.random.split(key, 3)
  f8 = jattn.cache.is_float8(dtype)
  scale = 0.02 if f8 else 1.0
  def pages(k, d):
    x = jax.random.normal(k, (P, ps, Nkv, d), jnp.float32)
    return (x / scale).astype(dtype) if f8 else x.astype(dtype)
  table = jax.random.permutation(k3, P)[:B * M].reshape(B, M).astype(jnp.int32)
  sc = jnp.full((Nkv,), scale, jnp.float32) if f8 else None
  return jattn.PagedKVCache(pages(k1, D), pages(k2, Dv), sc, sc), table


# ----------------------------------------------------------------------------- checks

def on_cpu(fn, *args):
  """The float32 reference on the host CPU (XLA:GPU would compile it for ~10 s)."""
  cpu = jax.devices("cpu")[0]
  def up(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating):
      x = x.astype(jnp.float32)
    return jax.device_put(x, cpu) if isinstance(x, jax.Array) else x
  args = jax.tree.map(up, args)
  with jax.default_device(cpu):
    return jax.tree.map(np.asarray, jax.jit(fn)(*args))


def check_cases():
  slopes = V.alibi_slopes(32)

  def user_bias(s, ctx):
    return s - 0.05 * (ctx.head + 1).astype(s.dtype) * jnp.abs(ctx.kv_pos - ctx.q_pos).astype(s.dtype)

  def user_mask(ctx):
    return (ctx.kv_pos % 2 == 0) | (ctx.kv_pos == ctx.q_pos)

  def qt(q, ctx):
    return q * (1.0 + 0.02 * ctx.head.astype(jnp.float32))

  def kt(k, ctx):
    return k * (1.0 + 0.0005 * ctx.kv_pos.astype(jnp.float32))

  base = dict(B=4, S=600, Nq=32, Nkv=8, D=128, Dv=None, ps=16, dtype=jnp.bfloat16,
              kv=None, var=None, plan=None, cfg=None)
  cases = [
      ("plain_p16", {}),
      ("plain_p1", dict(ps=1, S=300)),
      ("plain_p8", dict(ps=8)),
      ("plain_p64", dict(ps=64)),
      ("plain_p128", dict(ps=128)),
      ("d64", dict(D=64)),
      ("d256", dict(D=256)),
      ("dv64", dict(Dv=64)),
      ("mha_g1", dict(Nq=8)),
      ("g8_fp16", dict(Nq=64, dtype=jnp.float16)),
      ("fp8_e4m3", dict(kv=jnp.float8_e4m3fn)),
      ("fp8_d64_p8", dict(kv=jnp.float8_e4m3fn, D=64, ps=8)),
      ("fp8_d256_p64", dict(kv=jnp.float8_e4m3fn, D=256, ps=64)),
      ("fp8_p1_staged", dict(kv=jnp.float8_e4m3fn, ps=1, S=300)),
      ("fp8_softcap_window", dict(kv=jnp.float8_e4m3fn,
                                  var=V.compose(V.soft_cap(10.0), V.sliding_window(200)))),
      ("fp8_qk_transform", dict(kv=jnp.float8_e4m3fn,
                                var=V.Variant(query_transform=qt, key_transform=kt))),
      ("softcap", dict(var=V.soft_cap(10.0))),
      ("alibi", dict(var=V.alibi(slopes))),
      ("window", dict(var=V.sliding_window(200))),
      ("user", dict(var=V.Variant(logits_transform=user_bias, logits_mask=user_mask))),
      ("qk_transform", dict(var=V.Variant(query_transform=qt, key_transform=kt))),
      ("skewed_plan", dict(B=8, S=4000, plan="skewed")),
      ("skewed_plan_fp8", dict(B=8, S=4000, plan="skewed", kv=jnp.float8_e4m3fn)),
      ("unsplit_plan", dict(B=32, S=1000, plan="unsplit")),
      ("fp8_q_during_loads", dict(kv=jnp.float8_e4m3fn, plan="skewed",
                                  cfg=pd.DecodeConfig(q_first=False))),
      ("bf16_q_first_alibi", dict(var=V.alibi(slopes), cfg=pd.DecodeConfig(q_first=True))),
  ]
  return [(n, {**base, **c}) for n, c in cases]


def run_check(name, c, key):
  B, S, Nq, Nkv, D, ps = c["B"], c["S"], c["Nq"], c["Nkv"], c["D"], c["ps"]
  Dv = c["Dv"] or D
  kvdt = c["kv"] or c["dtype"]
  var = c["var"] or V.Variant(name="identity")
  kq, kc, kl = jax.random.split(key, 3)
  cache, table = random_cache(kc, B, S, Nkv, D, Dv, ps, kvdt)
  q = jax.random.normal(kq, (B, Nq, D), jnp.float32).astype(c["dtype"])
  lens = np.array(jax.random.randint(kl, (B,), 1, S + 1), np.int32)
  lens[0] = 0
  lens[1] = S
  plan = None
  if c["plan"] == "skewed":
    lens[:] = 37
    lens[2] = S
    plan = jattn.plan_decode(lens, ps, Nq, Nkv, D, min_unit_keys=64)
  if c["plan"] == "unsplit":
    plan = jattn.plan_decode(lens, ps, Nq, Nkv, D, split=False)
  lens = jnp.asarray(lens)
  f = jax.jit(lambda q, c, t, l, p: pd.decode(q, c, t, l, sm_scale=D ** -0.5, variant=var,
                                              plan=p, interpret=INTERPRET, config=c_cfg))
  c_cfg = c["cfg"]
  t0 = time.perf_counter()
  o, lse = jax.block_until_ready(f(q, cache, table, lens, plan))
  compile_s = time.perf_counter() - t0
  ro, rl = on_cpu(lambda *a: reference.decode(*a, sm_scale=D ** -0.5, variant=var),
                  q, cache, table, lens)
  err = rel_err(o, ro)
  fin = np.isfinite(np.asarray(rl))
  same_inf = bool(np.array_equal(np.isneginf(np.asarray(lse)), np.isneginf(np.asarray(rl))))
  lse_err = float(np.max(np.abs(np.asarray(lse)[fin] - np.asarray(rl)[fin])))
  tol = 1.5e-2 if jnp.dtype(c["dtype"]) == jnp.dtype(jnp.bfloat16) else 3e-3
  ok = err <= tol and same_inf and lse_err < 0.15
  return dict(name=name, ok=ok, rel_err=err, lse_err=lse_err, same_inf=same_inf,
              compile_s=round(compile_s, 2))


def run_merge_check(key):
  ka, kb, kc, kd = jax.random.split(key, 4)
  shape = (5, 37, 32, 128)
  oa = jax.random.normal(ka, shape, jnp.float32).astype(jnp.bfloat16)
  ob = jax.random.normal(kb, shape, jnp.float32).astype(jnp.bfloat16)
  la = jax.random.normal(kc, shape[:-1], jnp.float32) * 3
  lb = jax.random.normal(kd, shape[:-1], jnp.float32) * 3
  la = la.at[0].set(-jnp.inf)
  lb = lb.at[0, 0].set(-jnp.inf)
  o, l = jax.jit(functools.partial(pm.merge_states, interpret=INTERPRET))(oa, la, ob, lb)
  ro, rl = on_cpu(reference.merge_states, oa, la, ob, lb)
  fin = np.isfinite(np.asarray(rl))
  same_inf = bool(np.array_equal(np.isneginf(np.asarray(l)), np.isneginf(np.asarray(rl))))
  err = rel_err(o, ro)
  return dict(name="merge_states", ok=err < 1.5e-2 and same_inf, rel_err=err,
              lse_err=float(np.max(np.abs(np.asarray(l)[fin] - np.asarray(rl)[fin]))),
              same_inf=same_inf)


# ----------------------------------------------------------------------------- timing

def workloads():
  return [
      dict(name="decode_gqa32x8_b32_s4096_d128_p16", lens=[4096] * 32),
      dict(name="decode_gqa32x8_b128_s2048_d128_p16", lens=[2048] * 128),
      dict(name="decode_skewed_lengths", lens=skewed_lengths(64, 2048, 32768).tolist()),
      dict(name="decode_skewed_31x2k_32k", lens=[2048] * 31 + [32768]),
      dict(name="decode_gqa32x8_b32_s4096_d128_p16_fp8", lens=[4096] * 32,
           kv=jnp.float8_e4m3fn),
  ]


def time_workload(w, key, reps, configs, rounds=1, keep=("*",)):
  """Time w's rows (labels in `keep`, or all). Every row is compiled and timed once,
  then `rounds - 1` more times in turn, so drift falls on all rows alike; a row's ms is
  the median of its rounds."""
  Nq, Nkv, D, ps = 32, 8, 128, 16
  lens_np = np.asarray(w["lens"], np.int32)
  B, S = len(lens_np), int(lens_np.max())
  kvdt = w.get("kv", jnp.bfloat16)
  kc, kq, kd = jax.random.split(key, 3)
  cache, table = random_cache(kc, B, S, Nkv, D, D, ps, kvdt)
  q = jax.random.normal(kq, (B, Nq, D), jnp.float32).astype(jnp.bfloat16)
  lens = jnp.asarray(lens_np)
  nbytes = int(lens_np.sum()) * Nkv * 2 * D * jnp.dtype(kvdt).itemsize
  bf16_bytes = int(lens_np.sum()) * Nkv * 2 * D * 2
  rows, timed = [], []

  def add(label, fn, args, note=""):
    if "*" not in keep and label not in keep:
      return
    try:
      t = bench(fn, args, reps=reps, max_calls=10, budget_s=0.6)
      rows.append(dict(workload=w["name"], impl=label, ms=t.median_s * 1e3,
                       ms_rounds=[t.median_s * 1e3], spread=round(t.spread, 3),
                       compile_s=round(t.compile_s, 2), note=note))
      timed.append((rows[-1], fn, args))
    except Exception as e:  # noqa: BLE001  (a failing peer must not stop the probe)
      rows.append(dict(workload=w["name"], impl=label, error=f"{type(e).__name__}: {e}"[:400]))
    r = rows[-1]
    print(f"  {label:34s} " + (f"{r['ms']:8.3f} ms  {note}" if "ms" in r else
                               r["error"][:200]), flush=True)

  var = V.Variant(name="identity")
  plan = jattn.plan_decode(lens_np, ps, Nq, Nkv, D)
  def jd(cfg=None):
    return jax.jit(lambda q, c, t, l, p: pd.decode(q, c, t, l, sm_scale=D ** -0.5,
                                                   variant=var, plan=p, config=cfg))
  add("jattn.pallas", jd(), [(q, cache, table, lens, plan)],
      f"host plan: {int(np.asarray(plan.batch_units)[-1])} units, split={plan.split}")
  for cfg in configs:
    add(f"jattn.pallas[stages={cfg.stages}]", jd(cfg), [(q, cache, table, lens, plan)],
        "host plan")
  q_first = not jattn.cache.is_float8(kvdt)   # the other order than the default
  add(f"jattn.pallas[q_first={q_first}]", jd(pd.DecodeConfig(q_first=q_first)),
      [(q, cache, table, lens, plan)], "host plan; the other Q staging order")
  add("jattn.pallas[plan=None]", jd(), [(q, cache, table, lens, None)],
      "plan made inside the jit from device lengths")
  if w["name"] == "decode_gqa32x8_b32_s4096_d128_p16":
    for waves in (1, 4):
      pw = jattn.plan_decode(lens_np, ps, Nq, Nkv, D, waves=waves, split=True)
      add(f"jattn.pallas[split,waves={waves}]", jd(), [(q, cache, table, lens, pw)],
          f"{int(np.asarray(pw.batch_units)[-1])} units + merge")
  if w["name"].startswith("decode_skewed"):
    seq = dataclasses.replace(plan, work=None)
    add("jattn.pallas[sequence order]", jd(), [(q, cache, table, lens, seq)],
        "same units, kv-head-major in sequence order (run 3's dispatch)")
    for waves in (1, 2, 3):
      pw = jattn.plan_decode(lens_np, ps, Nq, Nkv, D, waves=waves)
      add(f"jattn.pallas[waves={waves}]", jd(), [(q, cache, table, lens, pw)],
          f"{int(np.asarray(pw.batch_units)[-1])} units, longest first")
    nosplit = jattn.plan_decode(lens_np, ps, Nq, Nkv, D, min_unit_keys=1 << 30)
    add("jattn.pallas[no split]", jd(), [(q, cache, table, lens, nosplit)],
        "one unit per sequence (no balancing)")
  if jattn.cache.is_float8(kvdt):
    add("jattn.pallas[float8_qk=False]", jd(pd.DecodeConfig(float8_qk=False)),
        [(q, cache, table, lens, plan)], "K converted to f16 like V (run 3's kernel)")
    for st in (3, 4):
      add(f"jattn.pallas[stages={st}]", jd(pd.DecodeConfig(stages=st)),
          [(q, cache, table, lens, plan)], "host plan; Q staged first")
    return _rounds(rows, timed, rounds, reps, nbytes, lens_np), bf16_bytes
  # Peers on the same bytes.
  Mpad = table.shape[1] * ps
  kd1, kd2 = jax.random.split(kd)
  kdense = jax.random.normal(kd1, (B, Mpad, Nkv, D), jnp.float32).astype(jnp.bfloat16)
  vdense = jax.random.normal(kd2, (B, Mpad, Nkv, D), jnp.float32).astype(jnp.bfloat16)
  cud = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
  if len(set(lens_np.tolist())) == 1:
    g = jax.jit(lambda q, k, v: cud(q[:, None], k, v))
    add("cudnn (dense)", g, [(q, kdense, vdense)], "dense K/V, same bytes")
  else:
    g = jax.jit(lambda q, k, v, l: cud(q[:, None], k, v, key_value_seq_lengths=l))
    add("cudnn (dense, lengths)", g, [(q, kdense, vdense, lens)],
        f"dense K/V [{B},{Mpad}] with lengths")
  del kdense, vdense
  try:
    import warnings
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      from jax.experimental.pallas.ops.gpu import paged_attention as jpa
    kp, vp = jnp.moveaxis(cache.k_pages, 2, 0), jnp.moveaxis(cache.v_pages, 2, 0)
    qs = q * jnp.asarray(D ** -0.5, q.dtype)
    add("jax.paged_attention", jax.jit(jpa.paged_attention), [(qs, kp, vp, table, lens)],
        "triton, own layout [Nkv,P,ps,D]")
  except Exception as e:  # noqa: BLE001
    print("  jax.paged_attention unavailable:", e)
  return _rounds(rows, timed, rounds, reps, nbytes, lens_np), bf16_bytes


def _rounds(rows, timed, rounds, reps, nbytes, lens_np):
  """The remaining interleaved rounds (`more_rounds`), then GB/s and tokens/s."""
  more_rounds(timed, rounds, lambda fn, args: bench(fn, args, reps=reps, max_calls=10,
                                                    budget_s=0.6).median_s * 1e3)
  for row, _, _ in timed:
    row["gbps"] = nbytes / row["ms"] / 1e6
    row["tokens_per_s"] = float(lens_np.sum()) / row["ms"] * 1e3
  return rows


def copy_gbps(reps):
  x = jax.random.normal(jax.random.key(1), (1 << 30,), jnp.float32).astype(jnp.bfloat16)
  t = bench(jax.jit(lambda x: -x), [(x,)], reps=reps, max_calls=10, budget_s=0.5)
  return 2 * x.size * 2 / t.median_s / 1e9


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--skip-check", action="store_true")
  ap.add_argument("--only", default="*")
  ap.add_argument("--stages", default="", help="extra ring depths to time, e.g. 2,3")
  ap.add_argument("--checks", default="*", help="fnmatch pattern of checks to run")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds")
  ap.add_argument("--rows", default="*", help="row labels to time, separated by ;")
  ap.add_argument("--tiny", action="store_true", help="CPU dry run of the script")
  args = ap.parse_args()
  if args.tiny:
    global check_cases, workloads
    small = dict(B=2, S=70, Nq=4, Nkv=2, D=64)
    cases = [(n, {**c, **small}) for n, c in check_cases()[:2]]
    check_cases = lambda: cases
    workloads = lambda: [dict(name="tiny", lens=[64, 64])]
  dev = jax.devices()[0]
  print("device:", dev.device_kind, "sms:", getattr(dev, "core_count", "?"), flush=True)
  result = dict(device=dev.device_kind, checks=[], rows=[])
  key = jax.random.key(0)
  if not args.skip_check:
    for i, (name, c) in enumerate(check_cases()):
      if not any(fnmatch.fnmatch(name, pat) for pat in args.checks.split(",")):
        continue
      try:
        r = run_check(name, c, jax.random.fold_in(key, i))
      except Exception as e:  # noqa: BLE001
        r = dict(name=name, ok=False, error=f"{type(e).__name__}: {e}"[:600])
        traceback.print_exc()
      result["checks"].append(r)
      print("check", r, flush=True)
    try:
      r = run_merge_check(jax.random.fold_in(key, 99))
    except Exception as e:  # noqa: BLE001
      r = dict(name="merge_states", ok=False, error=f"{type(e).__name__}: {e}"[:600])
    result["checks"].append(r)
    print("check", r, flush=True)
  result["copy_gbps"] = copy_gbps(args.reps)
  print(f"device copy: {result['copy_gbps']:.0f} GB/s", flush=True)
  configs = [pd.DecodeConfig(stages=int(s)) for s in args.stages.split(",") if s]
  for i, w in enumerate(workloads()):
    if not any(fnmatch.fnmatch(w["name"], pat) for pat in args.only.split(",")):
      continue
    print(w["name"], flush=True)
    rows, bf16_bytes = time_workload(w, jax.random.fold_in(key, 1000 + i), args.reps, configs,
                                     args.rounds, tuple(args.rows.split(";")))
    result["rows"] += rows
  with open(os.path.join(args.out, "decode_probe.json"), "w") as f:
    json.dump(result, f, indent=1, default=str)
  print("\n| workload | impl | ms | GB/s | % copy | rounds (ms) |")
  print("|---|---|---|---|---|---|")
  for r in result["rows"]:
    if "ms" in r:
      print(f"| {r['workload']} | {r['impl']} | {r['ms']:.3f} | {r['gbps']:.0f} | "
            f"{100 * r['gbps'] / result['copy_gbps']:.0f}% | "
            f"{' '.join(f'{x:.3f}' for x in r['ms_rounds'])} |")
    else:
      print(f"| {r['workload']} | {r['impl']} | error | {r['error'][:80]} | | |")
  ms = {(r["workload"], r["impl"]): r["ms"] for r in result["rows"] if "ms" in r}
  bf16 = ms.get(("decode_gqa32x8_b32_s4096_d128_p16", "jattn.pallas"))
  for impl in ("jattn.pallas", "jattn.pallas[q_first=False]", "jattn.pallas[float8_qk=False]"):
    f8 = ms.get(("decode_gqa32x8_b32_s4096_d128_p16_fp8", impl))
    if bf16 and f8:
      print(f"fp8 {impl}: {bf16 / f8:.2f}x the bf16 tokens/s (bar 1.8x)")
  bad = [c["name"] for c in result["checks"] if not c.get("ok")]
  print("checks failed:", bad or "none")


if __name__ == "__main__":
  main()
