"""Timing and the machine's two ceilings, measured in the same process as the workloads.

`bench(fn, args)` and `Timing` live in `jattn.bench.timing` (shared with `jattn.bench`):
the first call compiles (its time is `compile_s`), a second call measures roughly one
call, then `reps` repetitions of `calls` back-to-back calls over the rotated input sets,
each repetition timed on the host clock from before the first launch to
`block_until_ready` on the last output. The figure is the median over repetitions of
(repetition time / calls).

Ceilings: memory = an elementwise pass over a 2 GiB bf16 buffer, counting bytes read plus
bytes written (the issues' yardstick, "copy"); for context also a read-only pass (a max
over the same buffer), which kernels that mostly read can approach, so a memory-bound
row may show more than 100 % of the copy rate; compute = a bf16 8192^3 matrix product (random data), 2*N^3 FLOPs, and
the same product in float8_e4m3fn (A · Bᵀ with both operands K-contiguous, the layout
cuBLASLt's float8 GEMM takes, bf16 out): the ceiling of the float8 workloads.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from jattn.bench.timing import MAX_CALLS, REP_S, Timing, bench, time_reps  # noqa: F401  (re-exported for the harness)

_T0 = time.time()


def log(*a):
  """A progress line with the seconds since the run started (the probes' logs)."""
  print(f"[{time.time() - _T0:6.1f}s]", *a, flush=True)


def more_rounds(timed, rounds: int, time_ms, keep_going=lambda: True) -> None:
  """Rounds 2..`rounds` of a probe's interleaved A/B timing. `timed` holds (row, fn,
  args) of the rows already timed once, each row a dict with `ms_rounds` = [first ms].
  Every round times every row once, in order (A B C A B C ...), so clock drift over the
  run falls on all rows alike (`time_ms(fn, args)` -> ms; no new round is started once
  `keep_going()` is false). Then row["ms"] is the median of the row's rounds."""
  for _ in range(rounds - 1):
    for row, fn, args in timed:
      if keep_going():
        row["ms_rounds"].append(time_ms(fn, args))
  for row, _, _ in timed:
    row["ms"] = float(statistics.median(row["ms_rounds"]))


def probe_results() -> dict:
  """The probes' result record: device, JAX version, then their checks and timing rows."""
  dev = jax.devices()[0]
  res = dict(device=str(getattr(dev, "device_kind", dev)), jax=jax.__version__,
             checks=[], timing=[])
  log("device", res["device"])
  return res


def write_probe(res: dict, path: str, timing_line) -> None:
  """Write a probe's results to `path` (JSON) and print its checks, then its timing rows
  as `timing_line(row)` formats them."""
  with open(path, "w") as f:
    json.dump(res, f, indent=1)
  print("\n== checks ==")
  for r in res["checks"]:
    print(json.dumps(r))
  print("\n== timing (", res["device"], ") ==")
  for r in res["timing"]:
    print(timing_line(r))


def device_span(fn, args: list[tuple], calls: int = 100) -> dict:
  """The device's own clock over `calls` back-to-back calls (after a warm-up call), from
  the profiler's kernel records on the GPU streams: `span_s` = (last kernel end - first
  kernel start) / calls, the time per call with the launch gaps but without the host's
  first dispatch and the final synchronisation; `busy_s` = summed kernel time / calls;
  `kernels` per call; `by_kernel`: {kernel name: seconds per call}, largest first;
  `lines`, the stream lines read."""
  jax.block_until_ready(fn(*args[0]))
  with tempfile.TemporaryDirectory(prefix="jattn-prof-") as d:   # a trace per row: not kept
    with jax.profiler.trace(d):
      for i in range(calls):
        last = fn(*args[i % len(args)])
      jax.block_until_ready(last)
    (path,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    events, lines = [], []
    for plane in jax.profiler.ProfileData.from_file(path).planes:
      if plane.name.startswith("/device:GPU"):
        for line in plane.lines:
          if line.name.startswith("Stream"):
            lines.append(line.name)
            events += [(e.start_ns, e.duration_ns, e.name) for e in line.events]
  if not events:
    return dict(error="no kernel records on a GPU stream line", lines=lines)
  start = min(s for s, _, _ in events)
  end = max(s + d for s, d, _ in events)
  by_kernel = {}
  for _, d, name in events:
    by_kernel[name] = by_kernel.get(name, 0.0) + d * 1e-9 / calls
  return dict(span_s=(end - start) * 1e-9 / calls, busy_s=sum(d for _, d, _ in events) * 1e-9 / calls,
              kernels=len(events) / calls, lines=sorted(set(lines)),
              by_kernel=dict(sorted(by_kernel.items(), key=lambda kv: -kv[1])))


def ceilings(*, tiny: bool = False, reps: int = 7) -> dict:
  """{'copy_gbps', 'matmul_tflops', ...}: the measured memory and bf16 compute ceilings."""
  n_copy = (4 << 20) if tiny else (1 << 30)         # bf16 elements: 8 MiB or 2 GiB
  n_mm = 256 if tiny else 8192
  key = jax.random.key(42, impl="rbg")
  x = jax.jit(lambda k: jax.random.normal(k, (n_copy,), jnp.float32).astype(jnp.bfloat16))(key)
  copy = bench(jax.jit(lambda x: -x), [(x,)], reps=reps, max_calls=100, budget_s=1.0)
  copy_bytes = 2 * x.size * x.dtype.itemsize
  read = bench(jax.jit(jnp.max), [(x,)], reps=reps, max_calls=100, budget_s=1.0)
  del x
  ka, kb = jax.random.split(key)
  a = jax.random.normal(ka, (n_mm, n_mm), jnp.float32).astype(jnp.bfloat16)
  b = jax.random.normal(kb, (n_mm, n_mm), jnp.float32).astype(jnp.bfloat16)
  mm = bench(jax.jit(jnp.matmul), [(a, b), (b, a)], reps=reps, max_calls=100, budget_s=1.0)
  a8, b8 = a.astype(jnp.float8_e4m3fn), b.astype(jnp.float8_e4m3fn)
  del a, b
  abt = jax.jit(lambda x, y: jax.lax.dot_general(x, y, (((1,), (1,)), ((), ())),
                                                 preferred_element_type=jnp.bfloat16))
  mm8 = bench(abt, [(a8, b8), (b8, a8)], reps=reps, max_calls=100, budget_s=1.0)
  del a8, b8
  return dict(copy_gbps=copy_bytes / copy.median_s / 1e9,
              copy_bytes=copy_bytes, copy_ms=copy.median_s * 1e3,
              read_gbps=copy_bytes / 2 / read.median_s / 1e9,
              matmul_tflops=2 * n_mm**3 / mm.median_s / 1e12,
              matmul_n=n_mm, matmul_ms=mm.median_s * 1e3,
              matmul_fp8_tflops=2 * n_mm**3 / mm8.median_s / 1e12)


def time_rows(rows, rounds: int, calls: int = 20) -> dict:
  """A probe's timing: {key: {ms, ms_rounds, kernel_us}} for rows (key, fn, args_list).
  Each row is timed once with its device-clock kernel time (`device_span` over `calls`
  calls, the longest kernel), then `more_rounds` interleaves the remaining rounds."""
  res, timed = {}, []
  for key, fn, args in rows:
    try:
      t = bench(fn, args)
      span = device_span(fn, args, calls=calls)
    except Exception as e:  # noqa: BLE001  (one failing row must not cost the others)
      log(f"{key}: {type(e).__name__}: {str(e)[:300]}")
      continue
    r = res[key] = dict(ms_rounds=[t.median_s * 1e3],
                        kernel_us=round(max(span["by_kernel"].values()) * 1e6, 1))
    timed.append((r, fn, args))
    log(f"r0 {key} {t.median_s * 1e3:.4f} ms kernel {r['kernel_us']} us")
  more_rounds(timed, rounds, lambda fn, args: bench(fn, args).median_s * 1e3)
  for key, r in res.items():
    log(f"{key:52s} {r['ms']:.4f} ms  kernel {r['kernel_us']} us  "
        f"rounds {', '.join(f'{x:.4f}' for x in r['ms_rounds'])}")
  return res
