"""GPU probe for the CUDA FP8 kernels (csrc/, jattn.ffi): JIT build time and cache, then
timings next to cuDNN bf16 in one process.

  PYTHONPATH=. python3 -m benchmarks.fp8_probe [--out DIR] [--only prefill|decode]
      [--rounds N]     timings (every row interleaved over N rounds, median)
  PYTHONPATH=. python3 -m benchmarks.fp8_probe --build-check   first build in an empty
      cache (seconds), then a second process on that cache (its compile count)
  PYTHONPATH=. python3 -m benchmarks.fp8_probe --sanitize CASE one small call, for
      compute-sanitizer --tool memcheck|racecheck --kernel-name kns=jattn python3 ...
  PYTHONPATH=. python3 -m benchmarks.fp8_probe --ncu prefill|decode   the benchmark
      shape, two calls (for ncu -k regex:jattn --launch-skip 1 --launch-count 1)

Prefill: B4 T4096 H32 D128 causal; FP8 (implementation="cuda", and the FFI call alone,
with its build variants) vs cuDNN bf16 and jattn's bf16 prefill. Causal
FLOPs = 2 B N T^2 D. Decode: B32 S4096 Hq32 Hkv8 D128, FP8 pages of 16 tokens vs cuDNN
bf16 dense decode and jattn's bf16 paged decode; bytes = K + V read once. Timing:
benchmarks.timing.bench (median of 7 repetitions of back-to-back jitted calls).
VARIANTS: build-macro variants of the kernels (csrc/ knobs), timed next to the default.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jattn
from benchmarks.timing import bench, ceilings, device_span, log, more_rounds
from jattn.bench.definitions import rel_err
from jattn import reference, variants as V
from jattn.ffi import build, fp8

F8 = jnp.float8_e4m3fn


def build_check() -> dict:
  """First build of one instantiation in an empty cache, then a second process."""
  with tempfile.TemporaryDirectory() as d:
    os.environ["JATTN_CACHE_DIR"], old = d, os.environ.get("JATTN_CACHE_DIR")
    arch = fp8.device_arch()
    k = build.prefill_kernel(64, False, arch)
    t0 = time.perf_counter()
    build.build(k, arch)
    first = time.perf_counter() - t0
    code = ("from jattn.ffi import build; import sys; "
            f"build.build(build.prefill_kernel(64, False, {arch!r}), {arch!r}); "
            "print(build.stats['compiles'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    if old is None:
      del os.environ["JATTN_CACHE_DIR"]
    else:
      os.environ["JATTN_CACHE_DIR"] = old
  return dict(first_build_s=first, second_process_compiles=r.stdout.strip() or r.stderr[-300:])


# Kernel variants timed next to the defaults: extra (macro, value) build parameters.
# (P_BIAS, RESCALE_TAU) = (8, 0): p's exponent offset 8, O rescaled whenever a row's max
# rises (the kernel before session 14's lazy rescale).
PREFILL_VARIANTS = ((("P_BIAS", "8.f"), ("RESCALE_TAU", "0.f")),)
DECODE_VARIANTS = ()


def variant(kernel: build.Kernel, extra) -> build.Kernel:
  return build.Kernel(kernel.name, kernel.source, kernel.symbol,
                      tuple(sorted(dict(kernel.params + tuple(extra)).items())))


def register(kernel: build.Kernel) -> str:
  return fp8._target(kernel, fp8.device_arch())


def prefill_inputs(key, B, T, H, D, n=2):
  sets = []
  for i in range(n):
    ks = jax.random.split(jax.random.fold_in(key, i), 3)
    sets.append(tuple(jax.random.normal(k, (B, T, H, D), jnp.float32) for k in ks))
  return sets


def prefill_bench(B=4, T=4096, H=32, D=128, rounds=1, check_timing=False) -> dict:
  key = jax.random.key(0)
  f32 = prefill_inputs(key, B, T, H, D)
  bf = [tuple(x.astype(jnp.bfloat16) for x in s) for s in f32]
  s8 = [tuple(x.astype(F8) for x in s) for s in f32]
  del f32
  one = jnp.ones((H,), jnp.float32)
  flops = 2 * B * H * T * T * D
  res = {}

  def fp8_call(q, k, v):
    return jattn.attention(q, k, v, causal=True, q_scale=one, k_scale=one, v_scale=one,
                           implementation="cuda")

  def kernel_only(kernel):  # the FFI call alone (jattn.attention adds its checks)
    call = jax.ffi.ffi_call(register(kernel), fp8.prefill_result_shapes(B, T, T, H, H, D))
    return jax.jit(lambda q, k, v: call(q, k, v, one, one, one, sm_scale=np.float32(D ** -0.5),
                                        causal=np.bool_(True))[0])

  default = build.prefill_kernel(D, True, fp8.device_arch())
  cands = {
      "cudnn_bf16": (jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation="cudnn")), bf),
      "jattn_fp8_cuda": (jax.jit(fp8_call), s8),
      "jattn_fp8_kernel_only": (kernel_only(default), s8),
      **{"kernel_only_" + variant(default, ex).tag(): (kernel_only(variant(default, ex)), s8)
         for ex in PREFILL_VARIANTS},
      "jattn_bf16_pallas": (jax.jit(lambda q, k, v: jattn.attention(
          q, k, v, causal=True, implementation="pallas")), bf),
  }
  outs, timed = {}, []
  for name, (fn, args) in cands.items():
    try:
      t = bench(fn, args)
      outs[name] = t.out
      res[name] = dict(ms_rounds=[t.median_s * 1e3], spread=t.spread, compile_s=t.compile_s)
      timed.append((res[name], fn, args))
      log(f"prefill r0 {name:24s} {t.median_s * 1e3:8.3f} ms {flops / t.median_s / 1e12:7.1f} "
          f"TFLOP/s (spread {t.spread:.2f})")
    except Exception as e:  # noqa: BLE001  (report and go on)
      res[name] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
      log(f"prefill {name} failed: {res[name]['error']}")
  more_rounds(timed, rounds, lambda fn, args: bench(fn, args).median_s * 1e3)
  for name, r in res.items():  # interleaved rounds -> medians
    if "ms" in r:
      r["tflops"] = flops / r["ms"] / 1e9
      log(f"prefill {name:24s} {r['ms']:8.3f} ms {r['tflops']:7.1f} TFLOP/s "
          f"(rounds {', '.join(f'{x:.3f}' for x in r['ms_rounds'])})")
  if check_timing:
    for name, (fn, args) in cands.items():
      if "ms" in res.get(name, {}):
        res[name]["timing_check"] = timing_check(fn, args, res[name]["ms"] * 1e3)
  for name in outs:  # every fp8 output against cuDNN's on the same (rounded) data
    if "cudnn" not in name and "cudnn_bf16" in outs:
      res[f"rel_err_{name}_vs_cudnn_bf16"] = rel_err(outs[name], outs["cudnn_bf16"])
  return res


def timing_check(fn, args, us: float) -> dict:
  """The same function timed four ways, in this order: `us` (bench's default, already
  measured), bench at most 20 calls a repetition (the harness before session 12), bench
  with ~200 ms repetitions (1.4 s of back-to-back calls: a sustained load), and the
  device's span and kernel time per call over 100 calls after a 1 s pause
  (benchmarks.timing.device_span)."""
  old = bench(fn, args, max_calls=20)
  sustained = bench(fn, args, max_calls=100000, rep_s=0.2)
  time.sleep(1.0)
  span = device_span(fn, args)
  out = dict(us_default=us, us_20calls=old.median_s * 1e6,
             us_sustained=sustained.median_s * 1e6, calls_sustained=sustained.calls,
             span_us=span.get("span_s", float("nan")) * 1e6,
             busy_us=span.get("busy_s", float("nan")) * 1e6,
             kernels=span.get("kernels"), error=span.get("error"),
             by_kernel_us={k[:60]: v * 1e6 for k, v in list(span.get("by_kernel", {}).items())[:4]})
  log("timing check", json.dumps(out))
  return out


def decode_bench(B=32, S=4096, Hq=32, Hkv=8, D=128, page=16, rounds=1,
                 check_timing=False) -> dict:
  key = jax.random.key(1)
  kq, kk, kv = jax.random.split(key, 3)
  q = jax.random.normal(kq, (B, Hq, D), jnp.float32).astype(jnp.bfloat16)
  k = jax.random.normal(kk, (B, S, Hkv, D), jnp.float32)
  v = jax.random.normal(kv, (B, S, Hkv, D), jnp.float32)
  M = S // page
  perm = np.random.default_rng(0).permutation(B * M)
  table = jnp.asarray(perm.reshape(B, M), jnp.int32)
  inv = jnp.asarray(np.argsort(perm), jnp.int32)

  def pages(x):  # [B, S, H, D] -> [P, page, H, D] in table order
    return x.reshape(B * M, page, Hkv, D)[inv]

  scale = jnp.full((Hkv,), 1 / 64, jnp.float32)
  c8 = jattn.PagedKVCache(reference.quantize(pages(k), scale, F8),
                          reference.quantize(pages(v), scale, F8), scale, scale)
  cbf = jattn.PagedKVCache(pages(k).astype(jnp.bfloat16), pages(v).astype(jnp.bfloat16))
  kb, vb = k.astype(jnp.bfloat16), v.astype(jnp.bfloat16)
  del k, v
  lens = jnp.full((B,), S, jnp.int32)
  bytes8 = 2 * B * S * Hkv * D
  res = {}

  def decode_variant(kernel):  # the FFI call of fp8.decode, on a variant build
    splits, per = fp8.decode_splits(B, Hkv, S, getattr(jax.devices()[0], "core_count", 132))
    call = jax.ffi.ffi_call(register(kernel), (
        jax.ShapeDtypeStruct((B, Hq, D), jnp.bfloat16), jax.ShapeDtypeStruct((B, Hq), jnp.float32),
        jax.ShapeDtypeStruct((B, Hq, splits, D), jnp.float32),
        jax.ShapeDtypeStruct((B, Hq, splits), jnp.float32)))
    return jax.jit(lambda q, c, t, l: call(q, c.k_pages, c.v_pages, c.k_scale, c.v_scale, t, l,
                                           sm_scale=np.float32(D ** -0.5), splits=np.int64(splits),
                                           split_tokens=np.int64(per))[0])
  base = build.decode_kernel(D, Hq // Hkv)
  kernels = [variant(base, ex) for ex in DECODE_VARIANTS]
  build.build_many([(k, fp8.device_arch()) for k in [base] + kernels])  # up front, in parallel
  cands = {
      "cudnn_bf16_dense": (jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
          q[:, None], k, v, implementation="cudnn")[:, 0]), [(q, kb, vb)], 2 * bytes8),
      "jattn_fp8_cuda_paged": (jax.jit(lambda q, c, t, l: jattn.decode(
          q, c, t, l, implementation="cuda")), [(q, c8, table, lens)], bytes8),
      **{"fp8_" + k.tag(): (decode_variant(k), [(q, c8, table, lens)], bytes8)
         for k in kernels},
      "jattn_bf16_pallas_paged": (jax.jit(lambda q, c, t, l: jattn.decode(
          q, c, t, l, implementation="pallas")), [(q, cbf, table, lens)], 2 * bytes8),
  }
  outs, timed = {}, []
  for name, (fn, args, nbytes) in cands.items():
    try:
      t = bench(fn, args)
    except Exception as e:  # noqa: BLE001
      res[name] = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
      log(f"decode {name} failed: {res[name]['error']}")
      continue
    outs[name] = t.out
    res[name] = dict(ms_rounds=[t.median_s * 1e3], spread=t.spread)
    timed.append((res[name], fn, args))
    log(f"decode r0 {name:24s} {t.median_s * 1e6:8.1f} us "
        f"{nbytes / t.median_s / 1e9:7.0f} GB/s (spread {t.spread:.2f})")
  more_rounds(timed, rounds, lambda fn, args: bench(fn, args).median_s * 1e3)
  for name, (_, _, nbytes) in cands.items():   # interleaved rounds -> medians
    r = res.get(name, {})
    if "ms" in r:
      med = r.pop("ms") / 1e3
      r.update(us=med * 1e6, gbps=nbytes / med / 1e9, tokens_per_s=B / med,
               rounds_us=[x * 1e3 for x in r.pop("ms_rounds")])
      log(f"decode {name:24s} {med * 1e6:8.1f} us (median of {len(r['rounds_us'])})")
  if check_timing:
    for name, (fn, args, _) in cands.items():
      if "us" in res.get(name, {}):
        res[name]["timing_check"] = timing_check(fn, args, res[name]["us"])
  for name in outs:
    if "fp8" in name and "cudnn_bf16_dense" in outs:
      res[f"rel_err_{name}_vs_cudnn_bf16"] = rel_err(outs[name], outs["cudnn_bf16_dense"])
  return res


def ncu_calls(what: str):
  """Two calls of the default FP8 kernel at the benchmark shape (profile the second)."""
  if what == "prefill":
    B, T, H, D = 4, 4096, 32, 128
    q, k, v = (x.astype(F8) for x in prefill_inputs(jax.random.key(0), B, T, H, D, n=1)[0])
    fn = jax.jit(lambda q, k, v: jattn.attention(q, k, v, causal=True, implementation="cuda"))
    args = (q, k, v)
  else:
    B, S, Hq, Hkv, D, page = 32, 4096, 32, 8, 128, 16
    ks = jax.random.split(jax.random.key(1), 3)
    M = S // page
    kp = (jax.random.normal(ks[0], (B * M, page, Hkv, D), jnp.float32) / 4).astype(F8)
    vp = (jax.random.normal(ks[1], (B * M, page, Hkv, D), jnp.float32) / 4).astype(F8)
    sc = jnp.full((Hkv,), 0.25, jnp.float32)
    table = jnp.asarray(np.random.default_rng(0).permutation(B * M).reshape(B, M), jnp.int32)
    q = jax.random.normal(ks[2], (B, Hq, D), jnp.float32).astype(jnp.bfloat16)
    fn = jax.jit(lambda q, c, t, l: jattn.decode(q, c, t, l, implementation="cuda"))
    args = (q, jattn.PagedKVCache(kp, vp, sc, sc), table, jnp.full((B,), S, jnp.int32))
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  log(f"ncu {what}: two calls done")


SANITIZE_PREFILL = ((128, True, 150, 300), (64, False, 70, 130), (256, True, 130, 90))
SANITIZE_DECODE = ((700, 16, 4), (40, 8, 16))


def sanitize_calls(case: int):
  """One small call (case < 3: prefill, else decode), one per process: with all calls in
  one process (run 1) compute-sanitizer segfaulted after the first; one per process let
  most of them finish (run 2; see benchmarks/NOTES.md)."""
  rng = np.random.default_rng(0)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  prefill = SANITIZE_PREFILL[case:case + 1]
  decode = SANITIZE_DECODE[max(0, case - len(SANITIZE_PREFILL)):][:1] if case >= 3 else ()
  for D, causal, T, S in prefill:
    q, k, v = r(2, T, 2, D).astype(F8), r(2, S, 1, D).astype(F8), r(2, S, 1, D).astype(F8)
    o = jattn.attention(q, k, v, causal=causal, implementation="cuda")
    ref = reference.attention_fp8(q, k, v, *(jnp.ones((n,), jnp.float32) for n in (2, 1, 1)),
                                  sm_scale=D ** -0.5, variant=V.causal() if causal
                                  else V.Variant(name="identity"))[0]
    log(f"sanitize prefill D{D} causal={causal}: rel err {rel_err(o, ref):.3e}")
  for S, page, G in decode:
    k, v = r(2, S, 2, 128), r(2, S, 2, 128)
    M = -(-S // page)
    kp = jnp.pad(k, ((0, 0), (0, M * page - S), (0, 0), (0, 0))).reshape(2 * M, page, 2, 128)
    vp = jnp.pad(v, ((0, 0), (0, M * page - S), (0, 0), (0, 0))).reshape(2 * M, page, 2, 128)
    s = jnp.full((2,), 0.02, jnp.float32)
    c = jattn.PagedKVCache(reference.quantize(kp, s, F8), reference.quantize(vp, s, F8), s, s)
    table = jnp.arange(2 * M, dtype=jnp.int32).reshape(2, M)
    lens = jnp.asarray([S, S // 3], jnp.int32)
    q = r(2, 2 * G, 128).astype(jnp.bfloat16)
    o = jattn.decode(q, c, table, lens, implementation="cuda")
    ref = reference.decode(q.astype(jnp.float32), c, table, lens, sm_scale=128 ** -0.5,
                           variant=V.Variant(name="identity"))[0]
    log(f"sanitize decode S{S} G{G}: rel err {rel_err(o, ref):.3e}")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--sanitize", type=int, default=None, metavar="CASE",
                  help=f"one small call, CASE in 0..{len(SANITIZE_PREFILL) + len(SANITIZE_DECODE) - 1}")
  ap.add_argument("--build-check", action="store_true")
  ap.add_argument("--ncu", choices=("prefill", "decode"), default=None)
  ap.add_argument("--only", choices=("prefill", "decode"), default=None)
  ap.add_argument("--rounds", type=int, default=1,
                  help="interleaved rounds of the timed rows (median)")
  ap.add_argument("--timing-check", action="store_true",
                  help="every row and the copy also timed at <= 20 calls a repetition, as a "
                       "sustained load, and by the device's clock (fp8_probe.timing_check)")
  ap.add_argument("--decode-dims", default="128", help="head dims of the decode rows, e.g. 64,128,256")
  ap.add_argument("--decode-shapes", default="",
                  help="more D128 decode shapes B:S:Hq:Hkv[:page], comma-separated (e.g. "
                       "256:4096:4:1, 32:4096:32:8:64; pages of 16 unless given)")
  args = ap.parse_args()
  dev = jax.devices()[0]
  log("device", dev.device_kind, getattr(dev, "compute_capability", "?"))
  if args.sanitize is not None:
    sanitize_calls(args.sanitize)
    return
  if args.ncu:
    ncu_calls(args.ncu)
    return
  if args.build_check:
    log("build", build_check())
    return
  res = dict(device=dev.device_kind)
  res["ceilings"] = ceilings()
  log("ceilings", res["ceilings"])
  if args.timing_check:   # the copy ceiling's own pass, as ceilings() times it
    x = jnp.ones((1 << 30,), jnp.bfloat16) * 1.5
    res["ceilings"]["copy_timing_check"] = timing_check(
        jax.jit(lambda x: -x), [(x,)], res["ceilings"]["copy_ms"] * 1e3)
    del x
  res["prefill"] = prefill_bench(rounds=args.rounds, check_timing=args.timing_check) if args.only != "decode" else {}
  dims = [int(d) for d in args.decode_dims.split(",")]
  res["decode"] = decode_bench(rounds=args.rounds, check_timing=args.timing_check) if args.only != "prefill" and 128 in dims else {}
  for d in dims:
    if d != 128 and args.only != "prefill":
      res[f"decode_d{d}"] = decode_bench(D=d, rounds=args.rounds)
  for shape in filter(None, args.decode_shapes.split(",")):
    B, S, Hq, Hkv, page = ([int(x) for x in shape.split(":")] + [16])[:5]
    res[f"decode_b{B}_s{S}_hq{Hq}_hkv{Hkv}_p{page}"] = decode_bench(
        B=B, S=S, Hq=Hq, Hkv=Hkv, page=page, rounds=args.rounds, check_timing=args.timing_check)
  with open(os.path.join(args.out, "fp8_probe.json"), "w") as f:
    json.dump(res, f, indent=1, default=str)
  p, d = res["prefill"], res["decode"]

  def ratio(a, b, key):
    try:
      return a[key] / b[key]
    except (KeyError, TypeError, ZeroDivisionError):
      return float("nan")

  print("\n| what | figure |\n|---|---|")
  for name, r in p.items():
    if isinstance(r, dict) and "ms" in r:
      print(f"| prefill {name} | {r['ms']:.3f} ms, {r['tflops']:.0f} TFLOP/s |")
  for peer in ("cudnn_bf16", "jattn_bf16_pallas"):
    for mine in ("jattn_fp8_cuda", "jattn_fp8_kernel_only"):
      print(f"| prefill {mine} / {peer} speed | {ratio(p.get(mine, {}), p.get(peer, {}), 'tflops'):.2f}x |")
  for name, r in d.items():
    if isinstance(r, dict) and "us" in r:
      print(f"| decode {name} | {r['us']:.1f} us, {r['gbps']:.0f} GB/s |")
  for peer in ("cudnn_bf16_dense", "jattn_bf16_pallas_paged"):
    print(f"| decode fp8 / {peer} tokens/s | "
          f"{ratio(d.get('jattn_fp8_cuda_paged', {}), d.get(peer, {}), 'tokens_per_s'):.2f}x |")
  print(f"| decode fp8 GB/s / copy GB/s | "
        f"{d.get('jattn_fp8_cuda_paged', {}).get('gbps', float('nan')) / res['ceilings']['copy_gbps']:.2f} |")


if __name__ == "__main__":
  main()
