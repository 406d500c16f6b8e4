"""Multi-device scaling of jattn at 1, 2, 4 and 8 devices (strong scaling: fixed problem).

  python -m benchmarks.scaling [--out DIR] [--devices 1,2,4,8] [--benches decode_tp,...]
                               [--quick] [--tiny] [--host-devices N]

Benches (the first n devices of the machine, one mesh axis):
  decode_tp   paged decode with the query heads and the cache split by kv head over n
              devices (tensor parallel, `jattn.sharding`): tokens/s = batch / step time.
  prefill_tp  causal dense attention (prefill) with heads split over n devices: TFLOP/s.
  ring        `jattn.ring_attention` over n devices, causal, zig-zag layout, 128k tokens
              (sequence / context parallel): TFLOP/s.

Each row: device, devices, shape, median ms, throughput, scaling efficiency
throughput(n) / (n * throughput(1)) of the same run, the implementation the dispatcher
chose per shard, and the relative error against the 1-device result (on all outputs with
--tiny, on a fixed set of rows otherwise). Writes DIR/<date>-<device>-scaling.json.
FLOPs: 2 * Nq * (D + Dv) per visible (query, key) pair, as in benchmarks/workloads.py.

`--tiny` shrinks every shape for the CPU test; `--host-devices N` (CPU) makes XLA expose
N host devices (it must come before JAX starts its backend, so use it from the command
line, not after JAX ran).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import jattn
from benchmarks import timing
from jattn.bench.definitions import rel_err

BENCHES = ("decode_tp", "prefill_tp", "ring")
AXIS = "x"


@dataclasses.dataclass(frozen=True)
class Shape:
  batch: int
  seq: int          # kv length (decode) or sequence length
  num_q_heads: int
  num_kv_heads: int
  head_dim: int
  page_size: int = 16

  def __str__(self):
    return (f"B{self.batch} S{self.seq} Hq{self.num_q_heads} Hkv{self.num_kv_heads} "
            f"D{self.head_dim}")


FULL = {  # Llama-3-70B-like heads; 8 kv heads so TP8 leaves one per device
    "decode_tp": Shape(64, 8192, 64, 8, 128),
    "prefill_tp": Shape(1, 16384, 64, 8, 128),
    "ring": Shape(1, 131072, 32, 8, 128),
}
TINY = {
    "decode_tp": Shape(4, 64, 16, 8, 16, page_size=8),
    "prefill_tp": Shape(1, 64, 16, 8, 16),
    "ring": Shape(1, 256, 4, 2, 16),
}


def causal_flops(s: Shape) -> float:
  pairs = s.batch * s.seq * (s.seq + 1) / 2
  return 2.0 * s.num_q_heads * 2 * s.head_dim * pairs


# ----------------------------------------------------------------------------- inputs

def _normal(key, shape, dtype):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def decode_inputs(s: Shape, dtype):
  kq, kk, kv = jax.random.split(jax.random.key(0), 3)
  pages_per_seq = -(-s.seq // s.page_size)
  P_ = s.batch * pages_per_seq
  cache = jattn.PagedKVCache(_normal(kk, (P_, s.page_size, s.num_kv_heads, s.head_dim), dtype),
                             _normal(kv, (P_, s.page_size, s.num_kv_heads, s.head_dim), dtype))
  perm = np.random.default_rng(0).permutation(P_).astype(np.int32)
  table = jnp.asarray(perm.reshape(s.batch, pages_per_seq))
  kv_lens = jnp.full((s.batch,), s.seq, jnp.int32)
  q = _normal(kq, (s.batch, s.num_q_heads, s.head_dim), dtype)
  return q, cache, table, kv_lens


def dense_inputs(s: Shape, dtype):
  kq, kk, kv = jax.random.split(jax.random.key(1), 3)
  return (_normal(kq, (s.batch, s.seq, s.num_q_heads, s.head_dim), dtype),
          _normal(kk, (s.batch, s.seq, s.num_kv_heads, s.head_dim), dtype),
          _normal(kv, (s.batch, s.seq, s.num_kv_heads, s.head_dim), dtype))


# ----------------------------------------------------------------------------- benches

def _mesh(n):
  return jax.make_mesh((n,), (AXIS,), devices=jax.devices()[:n])


def _put(mesh, tree, spec):
  return jax.device_put(tree, jax.tree.map(lambda s: NamedSharding(mesh, s), spec,
                                           is_leaf=lambda s: isinstance(s, P)))


def bench_decode_tp(s, dtype, n):
  """(mesh, jitted fn, sharded args, output -> output in global sequence order)."""
  mesh = _mesh(n)
  q, cache, table, kv_lens = decode_inputs(s, dtype)
  args = _put(mesh, (q, cache, table, kv_lens),
              (P(None, AXIS), jattn.PagedKVCache(P(None, None, AXIS), P(None, None, AXIS)),
               P(), P()))
  return mesh, jax.jit(jattn.decode), args, lambda o: o


def bench_prefill_tp(s, dtype, n):
  mesh = _mesh(n)
  args = _put(mesh, dense_inputs(s, dtype), (P(None, None, AXIS),) * 3)
  return mesh, jax.jit(functools.partial(jattn.attention, causal=True)), args, lambda o: o


def bench_ring(s, dtype, n):
  mesh = _mesh(n)
  zz = functools.partial(jattn.ring.zigzag, n=n)
  q, k, v = (zz(x) for x in dense_inputs(s, dtype))
  args = _put(mesh, (q, k, v), (P(None, AXIS),) * 3)
  fn = jax.jit(jax.shard_map(functools.partial(jattn.ring_attention, axis_name=AXIS),
                             mesh=mesh, in_specs=P(None, AXIS), out_specs=P(None, AXIS)))
  return mesh, fn, args, functools.partial(jattn.ring.unzigzag, n=n)


BUILDERS = {"decode_tp": bench_decode_tp, "prefill_tp": bench_prefill_tp, "ring": bench_ring}
OPS = {"decode_tp": "decode", "prefill_tp": "attention", "ring": "attention"}


def throughput(bench, s, sec):
  if bench == "decode_tp":
    return s.batch / sec, "tokens/s"
  return causal_flops(s) / sec / 1e12, "TFLOP/s"


def _sample(o, tiny):
  """Output rows compared against the 1-device run: all with --tiny, else 64 of them."""
  o = o.astype(jnp.float32)
  if not tiny:
    axis = 0 if o.ndim == 3 else 1                      # decode [B,H,D]; dense [B,T,H,D]
    idx = np.unique(np.linspace(0, o.shape[axis] - 1, 64).astype(np.int32))
    o = jnp.take(o, jnp.asarray(idx), axis=axis)
  return np.asarray(o)


def run_bench(bench, s, dtype, n, cfg, tiny, ref):
  row = dict(bench=bench, devices=n, device=jax.devices()[0].device_kind, shape=str(s),
             shape_info=dataclasses.asdict(s),
             dtype=jnp.dtype(dtype).name, status="ok", reason=None)
  try:
    mesh, fn, args, canon = BUILDERS[bench](s, dtype, n)
    with jax.set_mesh(mesh):
      t = timing.bench(fn, [args], **cfg)
      out = _sample(canon(jax.reshard(t.out, P())), tiny)
    t.out = None
    value, unit = throughput(bench, s, t.median_s)
    row.update(median_ms=t.median_s * 1e3, min_ms=t.min_s * 1e3, max_ms=t.max_s * 1e3,
               reps=t.reps, calls=t.calls, compile_s=round(t.compile_s, 2),
               throughput=value, unit=unit, chosen=jattn.dispatch.chosen(OPS[bench]))
    if unit == "TFLOP/s":
      row["tflops"] = value
    else:
      row["tokens_per_s"] = value
    if n == 1 or ref.get(bench) is None:
      ref[bench] = out
    row["max_err"] = rel_err(out, ref[bench])
  except Exception as e:  # noqa: BLE001  (the row records it; the run goes on)
    row.update(status="error", reason=f"{type(e).__name__}: {str(e).strip()[:400]}")
    if os.environ.get("JATTN_BENCH_TRACEBACK"):
      traceback.print_exc()
  return row


def efficiencies(rows):
  """efficiency = throughput(n) / (n * throughput(1)), per bench."""
  base = {r["bench"]: r["throughput"] for r in rows if r["devices"] == 1 and r["status"] == "ok"}
  for r in rows:
    b = base.get(r["bench"])
    r["efficiency"] = (r["throughput"] / (r["devices"] * b)
                       if b and r["status"] == "ok" else None)


def main(argv=None) -> str:
  """Run the benches; returns the path of the JSON written."""
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  ap.add_argument("--devices", default="1,2,4,8")
  ap.add_argument("--benches", default=",".join(BENCHES))
  ap.add_argument("--quick", action="store_true", help="fewer repetitions")
  ap.add_argument("--tiny", action="store_true", help="tiny shapes, float32 (CPU test)")
  ap.add_argument("--host-devices", type=int, default=0,
                  help="expose this many host (CPU) devices; only before JAX starts")
  args = ap.parse_args(argv)
  if args.host_devices:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      raise SystemExit("--host-devices: JAX's backends already started; set "
                       "XLA_FLAGS=--xla_force_host_platform_device_count=N instead")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.host_devices}")

  counts = [int(c) for c in args.devices.split(",") if c]
  benches = [b for b in args.benches.split(",") if b]
  for b in benches:
    if b not in BENCHES:
      raise SystemExit(f"unknown bench {b!r}; choose from {BENCHES}")
  shapes = TINY if args.tiny else FULL
  dtype = jnp.float32 if args.tiny else jnp.bfloat16
  cfg = (dict(reps=2, max_calls=2, budget_s=0.02) if args.tiny else
         dict(reps=3, max_calls=100, budget_s=0.5) if args.quick else
         dict(reps=7, max_calls=timing.MAX_CALLS, budget_s=1.5))

  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  slug = ("".join(c if c.isalnum() else "-" for c in kind.lower()).strip("-")
          if dev.platform == "gpu" else dev.platform)
  name = f"{date}-{slug}-scaling" + ("-tiny" if args.tiny else "")
  print(f"# {jax.device_count()} x {kind} | jax {jax.__version__} | {date}", flush=True)

  rows, ref = [], {}
  for bench in benches:
    s = shapes[bench]
    print(f"\n## {bench}  [{s}]", flush=True)
    for n in counts:
      if n > jax.device_count():
        rows.append(dict(bench=bench, devices=n, shape=str(s), status="skipped",
                         reason=f"only {jax.device_count()} devices"))
        continue
      r = run_bench(bench, s, dtype, n, cfg, args.tiny, ref)
      rows.append(r)
      if r["status"] == "ok":
        print(f"  {n} devices: {r['median_ms']:9.3f} ms  {r['throughput']:10.4g} {r['unit']}"
              f"  err {r['max_err']:.1e}  ({r['chosen']})", flush=True)
      else:
        print(f"  {n} devices: {r['status']}: {r['reason']}", flush=True)
  efficiencies(rows)
  meta = dict(device=kind, platform=dev.platform, device_count=jax.device_count(),
              jax_version=jax.__version__, jattn_version=jattn.__version__, date=date,
              argv=sys.argv[1:] if argv is None else list(argv), timing=cfg,
              tiny=args.tiny, dtype=jnp.dtype(dtype).name)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, name + ".json")
  with open(path, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1, default=float)
  print(f"\n# wrote {path}", flush=True)
  for r in rows:
    if r.get("efficiency") is not None:
      print(f"  {r['bench']:10s} x{r['devices']}: efficiency {r['efficiency']:.0%}")
  return path


if __name__ == "__main__":
  main()
