"""Timing shared by `jattn.bench` and the side-by-side harness (`benchmarks/`).

`bench(fn, args)`: the first call compiles (its time is `compile_s`), a second call
measures roughly one call, then `reps` repetitions of `calls` back-to-back calls over the
rotated input sets, each repetition timed on the host clock from before the first launch
to `block_until_ready` on the last output (the device runs one stream in order). The
figure is the median over repetitions of (repetition time / calls). `calls` is at most
`max_calls`, fewer for slow functions so one implementation takes about `budget_s`.

Each repetition also carries the host's dispatch of its first call and the wake-up after
the last (~140 µs together on the lent H100 machine), so a repetition must be long: with
at most 20 calls a B32 S4096 float8 decode measured 111 µs where 400 calls and the
device's own clock (profiler span over 100 calls) both gave 104 µs (session 12,
`benchmarks/NOTES.md`). Hence up to `MAX_CALLS` calls per repetition.

Inputs rotate over `num_input_sets(bytes of one set)` sets so that repeated calls do not
measure a warm L2 (a set smaller than ~2x L2 gets company, up to 4 sets).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import jax

L2_BYTES = 64 << 20          # rotate inputs until a set of them outgrows ~2x this (H100 50 MB, H200 60 MB)
MAX_INPUT_SETS = 4
MAX_CALLS = 400


def num_input_sets(set_bytes: float) -> int:
  return int(min(MAX_INPUT_SETS, max(1, math.ceil(2 * L2_BYTES / max(set_bytes, 1)))))


@dataclasses.dataclass
class Timing:
  median_s: float
  min_s: float
  max_s: float
  reps: int
  calls: int
  compile_s: float
  out: object = None

  @property
  def spread(self) -> float:
    return (self.max_s - self.min_s) / self.median_s if self.median_s > 0 else 0.0


def bench(fn, args: list[tuple], *, reps: int = 7, max_calls: int = MAX_CALLS,
          budget_s: float = 1.5) -> Timing:
  n = len(args)
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args[0]))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args[1 % n]))
  one = max(time.perf_counter() - t0, 1e-6)
  calls = int(max(1, min(max_calls, budget_s / (reps * one))))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for i in range(calls):
      last = fn(*args[i % n])
    jax.block_until_ready(last)
    times.append((time.perf_counter() - t0) / calls)
    del last
  return Timing(statistics.median(times), min(times), max(times), reps, calls, compile_s, out)
