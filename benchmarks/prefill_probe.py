"""GPU probe for the Pallas prefill kernel (jattn.pallas.prefill): compiled correctness
against the reference, then timings next to cuDNN (and tokamax when importable), all in
one process. The full side-by-side harness is benchmarks/run.py; this is the kernel
author's quick loop.

  PYTHONPATH=. python3 -m benchmarks.prefill_probe [--out DIR] [--deadline S] [--only K]

Timing: median over 7 samples of 20 back-to-back jitted calls, wall clock around
block_until_ready (as in /work/shared/anchors.md). Causal FLOPs = 2 B Nq T^2 D (half the
dense 4 B Nq T S D); the window row reports time only.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import os
import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks.timing import log, more_rounds, probe_results, write_probe
from jattn import reference, variants as V
from jattn.bench.definitions import rel_err
from jattn.pallas import prefill as P

T0 = time.time()


def rand(key, shape, dtype):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def ref_f32(q, k, v, **kw):
  f = lambda *a: reference.attention(*(x.astype(jnp.float32) for x in a), **kw)
  return jax.jit(f)(q, k, v)


# ----------------------------------------------------------------------------- checks

def rel_bias(s, ctx):
  return s - 0.05 * (ctx.head + 1).astype(s.dtype) * jnp.abs(ctx.kv_pos - ctx.q_pos).astype(s.dtype)


def even_keys(ctx):
  return (ctx.kv_pos % 2 == 0) | (ctx.kv_pos == ctx.q_pos)


CHECKS = [
    # name, (B, T, S, Nq, Nkv, D, Dv), dtype, variant, (q_lengths, kv_lengths)
    ("gqa_d128_causal_lens", (2, 384, 384, 4, 2, 128, 128), jnp.bfloat16, V.causal(),
     ([300, 384], [384, 200])),
    ("d64_dv128_fp16_softcap_window", (1, 200, 330, 2, 1, 64, 128), jnp.float16,
     V.compose(V.sliding_window(64), V.soft_cap(5.0)), None),
    ("d256_causal_alibi", (1, 256, 256, 2, 2, 256, 256), jnp.bfloat16,
     V.compose(V.causal(), V.alibi(V.alibi_slopes(2))), None),
    ("d128_user_variant_T_ne_S", (1, 256, 512, 2, 1, 128, 128), jnp.bfloat16,
     V.compose(V.causal(), V.Variant(logits_transform=rel_bias, logits_mask=even_keys)), None),
]


def _check(results, name, fn):
  try:
    row = dict(check=name, **fn())
    log("check", row)
  except Exception as e:  # noqa: BLE001
    log("check", name, "FAILED", type(e).__name__, str(e)[:2000])
    traceback.print_exc()
    row = dict(check=name, error=f"{type(e).__name__}: {str(e)[:500]}")
  results["checks"].append(row)


def _out_lse_errors(o, lse, ro, rl):
  lse, rl = np.asarray(lse), np.asarray(rl)
  fin = np.isfinite(rl)
  return dict(out_rel=rel_err(o, ro),
              lse_abs=float(np.max(np.abs(lse[fin] - rl[fin]))) if fin.any() else 0.0,
              lse_inf_match=bool(np.array_equal(np.isneginf(lse), np.isneginf(rl))))


def run_checks(results):
  key = jax.random.key(1)
  for name, (B, T, S, Nq, Nkv, D, Dv), dtype, var, lens in CHECKS:
    def dense(B=B, T=T, S=S, Nq=Nq, Nkv=Nkv, D=D, Dv=Dv, dtype=dtype, var=var, lens=lens,
              name=name):
      ks = jax.random.split(jax.random.fold_in(key, len(name)), 4)
      q, k, v = rand(ks[0], (B, T, Nq, D), dtype), rand(ks[1], (B, S, Nkv, D), dtype), \
          rand(ks[2], (B, S, Nkv, Dv), dtype)
      ql, kl = (None, None) if lens is None else map(lambda x: jnp.asarray(x, jnp.int32), lens)
      kw = dict(sm_scale=D ** -0.5, variant=var, q_lengths=ql, kv_lengths=kl)
      o, lse = jax.jit(functools.partial(P.attention, **kw))(q, k, v)
      return _out_lse_errors(o, lse, *ref_f32(q, k, v, **kw))
    _check(results, name, dense)

  def grad():  # through the public API: the dispatcher must pick pallas_mosaic on GPU
    B, T, S, Nq, Nkv, D = 2, 320, 384, 4, 2, 128
    ks = jax.random.split(jax.random.key(2), 4)
    q, k, v = (rand(ks[0], (B, T, Nq, D), jnp.bfloat16), rand(ks[1], (B, S, Nkv, D), jnp.bfloat16),
               rand(ks[2], (B, S, Nkv, D), jnp.bfloat16))
    do = rand(ks[3], (B, T, Nq, D), jnp.float32)
    ql, kl = jnp.asarray([320, 200], jnp.int32), jnp.asarray([384, 250], jnp.int32)
    loss = lambda q, k, v: jnp.sum(jattn.attention(
        q, k, v, causal=True, logits_soft_cap=4.0, q_lengths=ql, kv_lengths=kl)
        .astype(jnp.float32) * do)
    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    var = V.compose(V.causal(), V.soft_cap(4.0))
    rloss = lambda q, k, v: jnp.sum(reference.attention(
        q, k, v, sm_scale=D ** -0.5, variant=var, q_lengths=ql, kv_lengths=kl)[0] * do)
    rg = jax.jit(jax.grad(rloss, argnums=(0, 1, 2)))(*(x.astype(jnp.float32) for x in (q, k, v)))
    return dict(chosen=jattn.dispatch.chosen("attention"),
                **{f"d{n}_rel": rel_err(a, b) for n, a, b in zip("qkv", g, rg)})
  _check(results, "grad_softcap_gqa_lens", grad)

  def packed(paged):
    Nq, Nkv, D = 8, 2, 128
    q_lens, kv_lens = [5, 0, 300, 77], [9, 40, 500, 77]
    ks = jax.random.split(jax.random.key(3), 3)
    qo = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
    q = rand(ks[0], (sum(q_lens) + 3, Nq, D), jnp.bfloat16)
    var = V.causal()
    if not paged:
      ko = jnp.asarray(np.concatenate([[0], np.cumsum(kv_lens)]), jnp.int32)
      k = rand(ks[1], (sum(kv_lens) + 2, Nkv, D), jnp.bfloat16)
      v = rand(ks[2], (sum(kv_lens) + 2, Nkv, D), jnp.bfloat16)
      o, lse = jattn.prefill_ragged(q, k, v, qo, ko, return_lse=True)
      ref = jax.jit(lambda *a: reference.prefill_ragged(
          *(x.astype(jnp.float32) for x in a[:3]), *a[3:], sm_scale=D ** -0.5, variant=var))
      ro, rl = ref(q, k, v, qo, ko)
      return dict(chosen=jattn.dispatch.chosen("prefill_ragged"), **_out_lse_errors(o, lse, ro, rl))
    ps, B = 16, 4
    M = -(-max(kv_lens) // ps)
    perm = np.random.default_rng(0).permutation(B * M + 3)
    table = jnp.asarray(perm[:B * M].reshape(B, M), jnp.int32)
    pages = rand(ks[1], (B * M + 3, ps, Nkv, D), jnp.bfloat16)
    vpages = rand(ks[2], (B * M + 3, ps, Nkv, D), jnp.bfloat16)
    cache = jattn.PagedKVCache(pages, vpages)
    kl = jnp.asarray(kv_lens, jnp.int32)
    o, lse = jattn.prefill(q, cache, table, kl, qo, return_lse=True)
    ref = jax.jit(lambda q, c, *a: reference.prefill(
        q.astype(jnp.float32), jattn.PagedKVCache(c.k_pages.astype(jnp.float32),
                                                  c.v_pages.astype(jnp.float32)),
        *a, sm_scale=D ** -0.5, variant=var))
    ro, rl = ref(q, cache, table, kl, qo)
    return dict(chosen=jattn.dispatch.chosen("prefill"), **_out_lse_errors(o, lse, ro, rl))
  _check(results, "prefill_ragged_causal", lambda: packed(False))
  _check(results, "prefill_paged16_causal", lambda: packed(True))


# ----------------------------------------------------------------------------- timing

def bench(fn, args, n=20, samples=7):
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(samples):
    t = time.perf_counter()
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
    ts.append((time.perf_counter() - t) / n)
  return statistics.median(ts)


def tokamax_module():
  try:
    from benchmarks.impls import import_tokamax
    tk, why = import_tokamax()
    return tk, why
  except Exception as e:  # noqa: BLE001
    return None, f"{type(e).__name__}: {e}"


_DATA = {}


def dense_data(B, T, Nq, Nkv, D):
  key = (B, T, Nq, Nkv, D)
  if key not in _DATA:
    _DATA.clear()
    ks = jax.random.split(jax.random.key(0), 3)
    _DATA[key] = (rand(ks[0], (B, T, Nq, D), jnp.bfloat16), rand(ks[1], (B, T, Nkv, D), jnp.bfloat16),
                  rand(ks[2], (B, T, Nkv, D), jnp.bfloat16))
  return _DATA[key]


def timing_rows():
  """(shape label, group, impl label, make) with make() -> (fn, args, flops or None)."""
  rows = []

  def dense(shape, group, label, f, fwd_bwd=False):
    B, T, Nq, Nkv, D = shape
    causal = "causal" in group
    flops = 4 * B * Nq * T * T * D * (0.5 if causal else 1.0) * (3.5 if fwd_bwd else 1.0)
    if "window" in group:
      flops = None

    def make():
      q, k, v = dense_data(*shape)
      fn = jax.jit(f)
      if fwd_bwd:
        do = rand(jax.random.key(7), q.shape, q.dtype)
        fn = jax.jit(lambda q, k, v: jax.vjp(f, q, k, v)[1](do))
      return fn, (q, k, v), flops
    rows.append((f"B{B} T{T} Hq{Nq} Hkv{Nkv} D{D}", group, label, make))

  def ours(var, cfg=None):
    return lambda q, k, v: P.attention(q, k, v, sm_scale=q.shape[-1] ** -0.5, variant=var,
                                       q_lengths=None, kv_lengths=None, config=cfg)[0]

  def ours_with(var, change):
    """`ours` with the config the op would pick (tuned or default), changed by `change`."""
    def f(q, k, v):
      cfg = P.pick_config("attention", q, k, v, batch=q.shape[0], q_len=q.shape[1],
                          kv_len=k.shape[1], variant=var, interpret=False)
      return ours(var, change(cfg))(q, k, v)
    return f

  one_cta = lambda cfg: dataclasses.replace(cfg, persistent=False, heavy_first=True)

  def cudnn(causal, window=None):
    return lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=causal, local_window_size=window, implementation="cudnn")

  def tokamax(causal):
    tk, why = tokamax_module()
    if tk is None:
      def fail(q, k, v):
        raise RuntimeError(why)
      return fail
    return lambda q, k, v: tk.dot_product_attention(q, k, v, is_causal=causal,
                                                    implementation="mosaic")

  c = V.causal()
  main = (4, 4096, 32, 32, 128)
  dense(main, "causal", "jattn", ours(c))
  dense(main, "causal", "jattn persistent", ours(c, P.Config(persistent=True)))
  dense(main, "causal", "jattn 1 CTA/tile", ours(c, P.Config(persistent=False)))
  dense(main, "causal", "cudnn", cudnn(True))
  dense(main, "causal", "tokamax mosaic", tokamax(True))
  dense(main, "causal", "jattn persistent light-first",
        ours(c, P.Config(persistent=True, heavy_first=False)))
  dense(main, "fwd+bwd causal", "jattn", ours(c), fwd_bwd=True)
  dense(main, "fwd+bwd causal", "cudnn", cudnn(True), fwd_bwd=True)
  dense(main, "fwd+bwd causal", "tokamax mosaic", tokamax(True), fwd_bwd=True)
  B, Tq, S, Nq, Nkv, D = 8, 256, 4096, 32, 8, 128   # append_b8_q256_kv4096_gqa32x8
  append_flops = 4 * B * Nq * D * sum(S - Tq + t + 1 for t in range(Tq))

  def append(ps, cfg=None):
    """256 new queries per sequence against 4096 cached tokens (the 256 included),
    shuffled pages of `ps` tokens, causal bottom-right; `cfg` a prefill.Config."""
    def make():
      ks = jax.random.split(jax.random.key(5), 3)
      M = S // ps
      perm = np.random.default_rng(1).permutation(B * M)
      table = jnp.asarray(perm.reshape(B, M), jnp.int32)
      cache = jattn.PagedKVCache(rand(ks[1], (B * M, ps, Nkv, D), jnp.bfloat16),
                                 rand(ks[2], (B * M, ps, Nkv, D), jnp.bfloat16))
      q = rand(ks[0], (B * Tq, Nq, D), jnp.bfloat16)
      qo = jnp.arange(B + 1, dtype=jnp.int32) * Tq
      kl = jnp.full((B,), S, jnp.int32)
      if cfg is None:
        fn = jax.jit(lambda q, c, t, kl, qo: jattn.prefill(q, c, t, kl, qo, causal=True))
      else:
        fn = jax.jit(lambda q, c, t, kl, qo: P.prefill(
            q, c, t, kl, qo, sm_scale=D ** -0.5, variant=c_var, config=cfg)[0])
      return fn, (q, cache, table, kl, qo), append_flops
    return make

  def append_parts(part):
    """The paged page-16 call in two parts: the kernel alone on prebuilt slot-major
    queries ("kernel"), or the XLA gathers around it alone ("gathers")."""
    def make():
      _, (q, cache, table, kl, qo), flops = append(16)()
      cfg = P.default_config(D, D, op="prefill")
      rows_ = 2 * cfg.block_q
      tiles, n_slots, _ = P._slots(qo, q.shape[0], rows_)
      qs = P._slot_queries(q, qo, tiles, rows_)
      seq = jnp.stack([qo[1:] - qo[:-1], kl, jnp.zeros_like(kl)]).astype(jnp.int32)
      out_types = (jax.ShapeDtypeStruct((n_slots, rows_, Nq, D), q.dtype),
                   jax.ShapeDtypeStruct((Nq, n_slots, rows_), jnp.float32))
      if part == "kernel":
        f = jax.jit(lambda qs, k, v, tiles, seq, table: P.run_forward(
            P.Packed(Nq, n_slots, rows_, True, 16, k.shape[0], cfg.block_kv), qs, k, v,
            [tiles, seq, table], out_types, c_var, sm_scale=D ** -0.5, cfg=cfg, head_dim=D,
            v_head_dim=D, group=Nq // Nkv, interpret=False))
        return f, (qs, cache.k_pages, cache.v_pages, tiles, seq, table), flops
      o = jnp.zeros(out_types[0].shape, q.dtype)
      lse = jnp.zeros(out_types[1].shape, jnp.float32)

      def gathers(q, qo, o, lse):
        tiles, _, row_map = P._slots(qo, q.shape[0], rows_)
        return P._slot_queries(q, qo, tiles, rows_), P._gather_rows(o, lse, row_map)
      return jax.jit(gathers), (q, qo, o, lse), None
    return make

  def gather_part(part):
    """One XLA piece around the packed kernel, alone (append shape, page 16 slots). (A
    window-gather form of the slot-major queries timed the same as the row gather: run 6.)"""
    def make():
      ks = jax.random.split(jax.random.key(5), 3)
      q = rand(ks[0], (B * Tq, Nq, D), jnp.bfloat16)
      qo = jnp.arange(B + 1, dtype=jnp.int32) * Tq
      rows_ = 2 * P.default_config(D, D, op="prefill").block_q
      tiles, n_slots, row_map = P._slots(qo, q.shape[0], rows_)
      o = rand(ks[1], (n_slots, rows_, Nq, D), jnp.bfloat16)
      lse = rand(ks[2], (Nq, n_slots, rows_), jnp.float32)
      if part == "slots":
        return jax.jit(lambda qo: P._slots(qo, B * Tq, rows_)[0]), (qo,), None
      if part == "q rows":
        return (jax.jit(lambda q, qo, t: P._slot_queries(q, qo, t, rows_)), (q, qo, tiles),
                None)
      if part == "o rows":
        return jax.jit(lambda o, m: P._gather_rows(o, lse, m)[0]), (o, row_map), None
      return jax.jit(lambda l, m: P._gather_rows(o, l, m)[1]), (lse, row_map), None
    return make

  def append_ragged():
    """The same work with packed contiguous K/V (`prefill_ragged`: no pages)."""
    ks = jax.random.split(jax.random.key(5), 3)
    q = rand(ks[0], (B * Tq, Nq, D), jnp.bfloat16)
    k, v = (rand(kk, (B * S, Nkv, D), jnp.bfloat16) for kk in ks[1:])
    qo = jnp.arange(B + 1, dtype=jnp.int32) * Tq
    ko = jnp.arange(B + 1, dtype=jnp.int32) * S
    fn = jax.jit(lambda q, k, v, qo, ko: jattn.prefill_ragged(q, k, v, qo, ko, causal=True))
    return fn, (q, k, v, qo, ko), append_flops

  def append_dense():
    """The same work as dense `jattn.attention` (q [B,256], k/v [B,4096])."""
    ks = jax.random.split(jax.random.key(5), 3)
    q = rand(ks[0], (B, Tq, Nq, D), jnp.bfloat16)
    k, v = (rand(kk, (B, S, Nkv, D), jnp.bfloat16) for kk in ks[1:])
    return (jax.jit(lambda q, k, v: jattn.attention(q, k, v, causal=True)), (q, k, v),
            append_flops)

  c_var = c
  shape = "append B8 q256 kv4096 Hq32 Hkv8"
  rows.append((shape, "append causal", "jattn paged page16", append(16)))
  rows.append((shape, "append causal", "jattn paged page64", append(64)))
  rows.append((shape, "append causal", "jattn paged page128", append(128)))
  rows.append((shape, "append causal", "jattn ragged (packed, no pages)", append_ragged))
  rows.append((shape, "append causal", "jattn dense attention", append_dense))
  rows.append((shape, "append causal", "jattn paged page16 persistent",
               append(16, P.Config(persistent=True))))
  rows.append((shape, "append causal", "jattn paged page16 kernel only", append_parts("kernel")))
  rows.append((shape, "append causal", "jattn paged page16 gathers only", append_parts("gathers")))
  for part in ("slots", "q rows", "o rows", "lse rows"):
    rows.append((shape, "append gathers", part, gather_part(part)))

  def matmul():
    ks = jax.random.split(jax.random.key(6), 2)
    a, b = rand(ks[0], (8192, 8192), jnp.bfloat16), rand(ks[1], (8192, 8192), jnp.bfloat16)
    return jax.jit(lambda a, b: a @ b), (a, b), 2 * 8192 ** 3
  rows.append(("8192^3", "matmul", "xla bf16", matmul))
  nc = V.Variant(name="dense")
  dense(main, "dense", "jattn", ours(nc))
  dense(main, "dense", "jattn 1 CTA/tile", ours_with(nc, one_cta))
  dense(main, "dense", "cudnn", cudnn(False))
  dense(main, "dense", "tokamax mosaic", tokamax(False))
  t8 = (1, 8192, 32, 32, 128)
  dense(t8, "causal", "jattn", ours(c))
  dense(t8, "causal", "jattn 1 CTA/tile", ours_with(c, one_cta))
  dense(t8, "causal", "cudnn", cudnn(True))
  dense(t8, "causal", "tokamax mosaic", tokamax(True))
  w = V.sliding_window(1024)
  dense(t8, "window1024", "jattn", ours(w))
  dense(t8, "window1024", "jattn 1 CTA/tile", ours_with(w, one_cta))
  dense(t8, "window1024", "cudnn", cudnn(True, (1024, 0)))
  for shape in ((4, 4096, 32, 8, 128), (4, 4096, 32, 32, 64), (4, 4096, 16, 16, 256)):
    dense(shape, "causal", "jattn", ours(c))
    dense(shape, "causal", "jattn 1 CTA/tile", ours_with(c, one_cta))
    dense(shape, "causal", "cudnn", cudnn(True))
    dense(shape, "causal", "tokamax mosaic", tokamax(True))

  return rows


def run_timing(results, only, deadline, rounds=1, shapes=""):
  """Time the selected rows; with rounds > 1 every row is compiled once and then timed
  once per round, rows interleaved (A B C A B C ...), so that clock drift over the run
  falls on every row alike; a row's ms is the median of its rounds."""
  made = []
  for shape, group, label, make in timing_rows():
    if only and not any(fnmatch.fnmatchcase(f"{group} {label}", o) if set(o) & set("*?[")
                        else o in f"{group} {label}" for o in only.split(",")):
      continue
    if shapes and not any(o in shape for o in shapes.split(",")):
      continue
    if time.time() - T0 > deadline:
      log("deadline reached; skipping", shape, group, label)
      continue
    row = dict(shape=shape, group=group, impl=label)
    try:
      t = time.time()
      fn, args, flops = make()
      row.update(ms_rounds=[bench(fn, args) * 1e3], wall_s=time.time() - t)
      made.append((row, fn, args, flops))
    except Exception as e:  # noqa: BLE001
      row["error"] = f"{type(e).__name__}: {str(e)[:600]}"
    log("time", row)
    results["timing"].append(row)
  more_rounds([m[:3] for m in made], rounds, lambda fn, args: bench(fn, args) * 1e3,
              keep_going=lambda: time.time() - T0 < deadline)
  for row, _, _, flops in made:
    row["tflops"] = flops / row["ms"] / 1e9 if flops else None
    if rounds > 1:
      log("median", row)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--deadline", type=float, default=240.0)
  ap.add_argument("--only", default="", help="comma-separated substrings of 'group impl' "
                  "(fnmatch patterns where they hold *, ? or [)")
  ap.add_argument("--no-checks", action="store_true")
  ap.add_argument("--rounds", type=int, default=1, help="interleaved timing rounds")
  ap.add_argument("--shapes", default="", help="comma-separated substrings of the shape label")
  args = ap.parse_args()
  results = probe_results()
  if not args.no_checks:
    run_checks(results)
  run_timing(results, args.only, args.deadline, args.rounds, args.shapes)
  write_probe(results, os.path.join(args.out, "prefill_probe.json"), _timing_line)


def _timing_line(r) -> str:
  head = f"{r['shape']:38s} {r['group']:15s} {r['impl']:30s}"
  if "error" in r:
    return f"{head} ERROR {r['error'][:300]}"
  tf = f"{r['tflops']:7.1f} TFLOP/s" if r["tflops"] else ""
  return f"{head} {r['ms']:8.3f} ms {tf}"


if __name__ == "__main__":
  main()
