"""A/B of module-level switches of a jattn kernel, in one process (interleaved rounds,
the device clock beside), next to the peers: the record of a kernel change's measured
effect (benchmarks/NOTES.md quotes its output).

  PYTHONPATH=.:$TOKAMAX_SITE python3 -m benchmarks.flag_probe OUT FLAGS GROUP [ROUNDS]

FLAGS: comma-separated switches: boolean module attributes that a kernel reads at trace
time, added for the A/B (session 19's were jattn.pallas.prefill.NAMED_TURN and
NAMED_FREES; the kernel keeps no switch once the change is measured, so add one to try a
change), or prefill `Config` fields as `cfg:FIELD` (forced on, against each config's own
resolution: e.g. `cfg:early_qk` at head dim 128). Each
jattn row is compiled with every flag off ("off"), with each flag alone on (its
name) and, for several flags, with all on ("on"); JAX's caches are cleared between the
traces (jattn traces its kernels once per signature otherwise). GROUP:
  causal  the five prefill_causal shapes, with cuDNN and tokamax mosaic; `causal:128,256`
          only those of these head dims (a switch that acts at some head dims only: two
          builds of all five shapes take ~60 s a round beside the peers on an H200);
  sparse  block-sparse T8192 at density 0.1 / 0.3 / 0.5 (plan given, kernel alone) and the
          dense non-causal row at that shape;
  bwd     forward + backward, causal B4 T4096 H32 D128, with cuDNN's.
Checks: every build's outputs (for bwd the gradients) are compared bitwise with "off"
(reported, not required: a switch may change rounding), and against the float32
reference on the first rows (relative error < 2e-2). Writes OUT/flag_probe_GROUP.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks.impls import import_tokamax
from benchmarks.timing import log, time_rows
from jattn import block_sparse as bs, reference, variants as V
from jattn.pallas import block_sparse as PB, prefill as P

CAUSAL = ((4, 4096, 32, 32, 128), (1, 8192, 32, 32, 128), (4, 4096, 32, 8, 128),
          (4, 4096, 32, 32, 64), (4, 4096, 16, 16, 256))


class Switch:
  """One boolean switch: a module attribute ("pkg.mod.NAME"), or a prefill `Config` field
  ("cfg:FIELD": on forces the field True in every forward kernel, through
  `prefill.resolve`; off leaves each config's own resolution)."""

  def __init__(self, path: str):
    self.name = path
    if path.startswith("cfg:"):
      self.field, self.on, plain = path[4:], False, P.resolve
      if self.field not in {f.name for f in dataclasses.fields(P.Config)}:
        raise SystemExit(f"{path}: prefill Config has no field {self.field!r}")
      P.resolve = lambda *a: (dataclasses.replace(plain(*a), **{self.field: True})
                              if self.on else plain(*a))
      return
    mod, self.attr = path.rsplit(".", 1)
    self.mod = importlib.import_module(mod)
    if not isinstance(getattr(self.mod, self.attr), bool):
      raise SystemExit(f"{path} is not a boolean switch")

  def get(self) -> bool:
    return self.on if hasattr(self, "field") else getattr(self.mod, self.attr)

  def put(self, on: bool) -> None:
    if hasattr(self, "field"):
      self.on = on
    else:
      setattr(self.mod, self.attr, on)


class Flags:
  """The switches and the builds to compare: [(label, {switch: value})]."""

  def __init__(self, paths: str):
    self.flags = [Switch(path) for path in paths.split(",")]
    off = {f: False for f in self.flags}
    self.builds = [("off", off)] + [(f.name, {**off, f: True}) for f in self.flags]
    if len(self.flags) > 1:
      self.builds.append(("on", {f: True for f in self.flags}))

  @contextlib.contextmanager
  def set(self, values):
    old = {f: f.get() for f in values}
    for f, on in values.items():
      f.put(on)
    jax.clear_caches()
    try:
      yield
    finally:
      for f, on in old.items():
        f.put(on)


def rand(key, shape):
  return jax.random.normal(key, shape, jnp.float32).astype(jnp.bfloat16)


def ab_rows(flags, name, f, args, ref_fn, rows):
  """Compile f for every build, compare, add the rows; -> the check record."""
  outs, check = {}, {}
  ref = [np.asarray(x, np.float32) for x in jax.tree.leaves(ref_fn())]
  for label, values in flags.builds:
    with flags.set(values):
      comp = jax.jit(f).lower(*args).compile()
    outs[label] = [np.asarray(x, np.float32) for x in jax.tree.leaves(comp(*args))]
    rows.append((f"{name} {label}", comp, [args]))
    errs = [float(np.linalg.norm(o[tuple(slice(0, n) for n in r.shape)] - r)
                  / np.linalg.norm(r)) for o, r in zip(outs[label], ref)]  # ref's rows
    same = all(np.array_equal(a, b) for a, b in zip(outs[label], outs["off"]))
    check[label] = dict(bitwise_same_as_off=same, rel_err=errs)
    log(f"{name} {label}: == off bitwise: {same}; rel err vs float32 reference "
        f"{', '.join(f'{e:.2e}' for e in errs)}")
    assert max(errs) < 2e-2, (name, label, errs)
  return check


def f32(x):
  return x.astype(jnp.float32)


def sparse_group(flag, rows, checks, tk):
  B, T, N, D = 1, 8192, 32, 128
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (rand(kk, (B, T, N, D)) for kk in ks)
  up = lambda x: x[:, :1024].astype(jnp.float32)   # reference on the first 1024 rows
  dense = lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=V.Variant(),
                                      q_lengths=None, kv_lengths=None)[0]
  checks["dense noncausal T8192"] = ab_rows(
      flag, "dense noncausal T8192", dense, (q, k, v),
      lambda: reference.attention(up(q), f32(k), f32(v), sm_scale=D ** -0.5,
                                  variant=V.Variant())[0], rows)
  for d in (0.1, 0.3, 0.5):
    lay = bs.random_layout(N, T, T, 64, d, seed=0)
    plan = jattn.plan_block_sparse(lay, T, T)
    f = lambda q, k, v, lay, plan: PB.block_sparse_attention(
        q, k, v, lay, sm_scale=D ** -0.5, variant=V.Variant(), plan=plan)[0]
    lay_ref = bs.from_dense(np.asarray(lay.block_mask)[:, :16], (64, 64))
    checks[f"block_sparse {d}"] = ab_rows(
        flag, f"block_sparse {d}", f, (q, k, v, lay, plan),
        lambda: reference.block_sparse_attention(up(q), f32(k), f32(v), lay_ref,
                                                 sm_scale=D ** -0.5, variant=V.Variant())[0],
        rows)


def causal_shapes(dims: str = ""):
  """CAUSAL, or those of its shapes whose head dim is in the comma-separated `dims`."""
  keep = {int(d) for d in dims.split(",") if d}
  shapes = [s for s in CAUSAL if not keep or s[-1] in keep]
  if not shapes:
    raise SystemExit(f"no causal shape has head dim in {dims!r}")
  return shapes


def causal_group(flag, rows, checks, tk, dims=""):
  c = V.causal()
  for B, T, Nq, Nkv, D in causal_shapes(dims):
    ks = jax.random.split(jax.random.key(B * T + D), 3)
    q = rand(ks[0], (B, T, Nq, D))
    k, v = rand(ks[1], (B, T, Nkv, D)), rand(ks[2], (B, T, Nkv, D))
    name = f"causal B{B} T{T} H{Nq}/{Nkv} D{D}"
    f = lambda q, k, v: P.attention(q, k, v, sm_scale=D ** -0.5, variant=c, q_lengths=None,
                                    kv_lengths=None)[0]
    up = lambda x: x[:1].astype(jnp.float32)
    checks[name] = ab_rows(flag, name, f, (q, k, v), lambda: reference.attention(
        up(q), up(k), up(v), sm_scale=D ** -0.5, variant=c)[0], rows)
    rows.append((f"{name} cudnn", jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn")), [(q, k, v)]))
    if tk is not None:
      rows.append((f"{name} tokamax mosaic", jax.jit(lambda q, k, v: tk.dot_product_attention(
          q, k, v, is_causal=True, implementation="mosaic")), [(q, k, v)]))


def bwd_group(flag, rows, checks, tk):
  B, T, N, D = 4, 4096, 32, 128
  ks = jax.random.split(jax.random.key(1), 4)
  q, k, v, do = (rand(kk, (B, T, N, D)) for kk in ks)

  def grads(attn):
    return jax.grad(lambda q, k, v: (attn(q, k, v).astype(jnp.float32) * f32(do)).sum(),
                    argnums=(0, 1, 2))

  ours = grads(lambda q, k, v: jattn.attention(q, k, v, causal=True, implementation="pallas"))
  one = lambda x: x[:1].astype(jnp.float32)   # the reference on the first sequence
  ref = lambda: jax.grad(lambda q, k, v: (reference.attention(
      q, k, v, sm_scale=D ** -0.5, variant=V.causal())[0] * one(do)).sum(),
      argnums=(0, 1, 2))(one(q), one(k), one(v))
  checks["fwd+bwd causal"] = ab_rows(flag, "fwd+bwd causal B4 T4096 H32 D128", ours,
                                     (q, k, v), ref, rows)
  rows.append(("fwd+bwd cudnn", jax.jit(grads(lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, is_causal=True, implementation="cudnn"))), [(q, k, v)]))


GROUPS = dict(causal=causal_group, sparse=sparse_group, bwd=bwd_group)


def main(out, flag_paths, group, rounds):
  group, _, dims = group.partition(":")
  if dims and group != "causal":
    raise SystemExit(f"only the causal group takes head dims, not {group!r}")
  flag = Flags(flag_paths)
  rows, checks = [], {}
  log("device", jax.devices()[0].device_kind, "flags", flag_paths, "group", group)
  tk = None
  if group == "causal":
    tk, why = import_tokamax()
    if tk is None:
      log("tokamax:", why)
  GROUPS[group](flag, rows, checks, tk, *([dims] if dims else []))
  res = time_rows(rows, rounds)
  with open(f"{out}/flag_probe_{group}.json", "w") as fh:
    json.dump(dict(device=jax.devices()[0].device_kind, jax=jax.__version__, flags=flag_paths,
                   checks=checks, rows=res), fh, indent=1, default=str)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 5)
