"""Timing shared by `jattn.bench` and the side-by-side harness (`benchmarks/`).

`bench(fn, args)`: the first call compiles (its time is `compile_s`), a second call
measures roughly one call, then `reps` repetitions of `calls` back-to-back calls over the
rotated input sets, each repetition timed on the host clock from before the first launch
to `block_until_ready` on the last output (the device runs one stream in order). The
figure is the median over repetitions of (repetition time / calls). A repetition lasts
about `rep_s` (`calls` from a short calibration burst), at most `max_calls` calls, and
fewer for slow functions so one implementation takes about `budget_s`.

Why ~25 ms (session 12, `benchmarks/NOTES.md`): each repetition also carries the host's
dispatch of its first call and the wake-up after the last (~140 µs on the lent H100
machine), so it must be long against that: at 20 calls a repetition, a B32 S4096 float8
decode measured 110 µs where 25 ms repetitions, 1.4 s of back-to-back calls and the
device's own clock all gave 103-104 µs. Longer repetitions change nothing more, and keep
a row's timing short (~175 ms of calls). Compute-bound rows run at the board's power limit
within ~100 ms of back-to-back calls, whatever the repetition (an H100 at 690-700 W, SM
clock 1550-1770 MHz instead of 1980, during the prefill rows): the figure is that steady,
power-limited rate, not the boost clock of a first burst after an idle pause.

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
REP_S = 0.025


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
          budget_s: float = 1.5, rep_s: float = REP_S) -> Timing:
  n = len(args)
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args[0]))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args[1 % n]))
  one = max(time.perf_counter() - t0, 1e-6)   # one call, with the dispatch and wake-up
  burst = int(max(1, min(10, max_calls, rep_s / one)))
  if burst > 1:   # a call's time without them, roughly
    t0 = time.perf_counter()
    for i in range(burst):
      last = fn(*args[i % n])
    jax.block_until_ready(last)
    del last
    one = max((time.perf_counter() - t0) / burst, 1e-6)
  calls = int(max(1, min(max_calls, rep_s / one, budget_s / (reps * one))))
  times = [time_reps(fn, args, calls) for _ in range(reps)]
  return Timing(statistics.median(times), min(times), max(times), reps, calls, compile_s, out)


def time_reps(fn, args: list[tuple], calls: int) -> float:
  """One repetition of `bench`: `calls` back-to-back calls over the rotated input sets,
  host clock to `block_until_ready` on the last; -> seconds per call. fn is compiled."""
  n = len(args)
  t0 = time.perf_counter()
  for i in range(calls):
    last = fn(*args[i % n])
  jax.block_until_ready(last)
  return (time.perf_counter() - t0) / calls
