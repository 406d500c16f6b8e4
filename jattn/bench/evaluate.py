"""Evaluation: each solution checked against the definition's reference on fresh random
inputs, then timed; one `Trace` per (workload, solution), stored as JSON lines.

A solution runs through the public op (`jattn.<op>`) with the dispatcher forced onto it,
so what is checked and timed is exactly what serving code gets after `jattn.apply`.
Statuses: "passed" (within tolerance, timed), "incorrect" (outside tolerance: never
timed, never dispatched), "error" (raised), "unsupported" (its check or platform said no).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform as _platform
import secrets
import time
from typing import Callable, Iterable, Optional

import jax

from jattn import dispatch, tuned
from jattn.bench import timing
from jattn.bench.definitions import Definition, Workload, definition as get_definition, input_bytes
from jattn.bench.solutions import Solution

STATUSES = ("passed", "incorrect", "error", "unsupported")
TIMING = dict(reps=7, max_calls=timing.MAX_CALLS, budget_s=0.5)
TIMING_TINY = dict(reps=1, max_calls=1, budget_s=0.0)


@dataclasses.dataclass
class Trace:
  """One solution on one workload: where, what, how right, how fast."""

  definition: str
  workload: dict
  solution: str
  status: str
  bucket: str = ""                      # jattn.tuned.spec_bucket of the workload's spec
  config: Optional[dict] = None         # the kernel config point, if any
  heuristic: bool = False               # the point the kernel picks by itself
  max_error: Optional[float] = None     # ||out - ref|| / ||ref||
  lse_error: Optional[float] = None     # max |lse - ref|
  tolerance: Optional[float] = None
  median_ms: Optional[float] = None
  min_ms: Optional[float] = None
  max_ms: Optional[float] = None
  reps: Optional[int] = None
  calls: Optional[int] = None
  compile_s: Optional[float] = None
  interpret: bool = False
  reason: str = ""
  seed: Optional[int] = None
  device: str = ""
  platform: str = ""
  versions: dict = dataclasses.field(default_factory=dict)
  time: str = ""

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Trace":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  @property
  def workload_name(self) -> str:
    return self.workload.get("name", "")


def save_traces(path: str, traces: Iterable[Trace], mode: str = "a") -> None:
  """Append (or with mode="w" write) traces as JSON lines."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, mode) as f:
    for t in traces:
      f.write(json.dumps(t.to_json(), sort_keys=True) + "\n")


def load_traces(path: str) -> list[Trace]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [Trace.from_json(json.loads(line)) for line in f if line.strip()]


def versions() -> dict:
  import jaxlib
  import jattn
  return dict(jax=jax.__version__, jaxlib=jaxlib.__version__, jattn=jattn.__version__,
              python=_platform.python_version())


def forced(impl: dispatch.Impl):
  """A dispatcher override that sends every call of impl's op to `impl`."""
  return dispatch.override(lambda spec: impl if spec.op == impl.op else None)


def evaluate(defn, workloads: Iterable[Workload], solutions: Iterable[Solution], *,
             interpret: Optional[bool] = None, timing_kw: Optional[dict] = None,
             seed: Optional[int] = None, heuristic: Callable = lambda sol, wl: False,
             log: Callable[[str], None] = lambda msg: None) -> list[Trace]:
  """Check, then time, every solution on every workload. `interpret`: let Pallas
  solutions run interpreted off-GPU (default: on the CPU). `seed`: inputs from seed,
  seed + 1, ... (default: fresh random seeds). Returns the traces (not saved)."""
  defn = get_definition(defn) if isinstance(defn, str) else defn
  solutions = list(solutions)
  platform = dispatch.current_platform()
  interpret = (platform == "cpu") if interpret is None else interpret
  kw = dict(TIMING if timing_kw is None else timing_kw)
  base = (tuned.device_kind(), platform, versions())
  traces = []
  n = 0
  for wl in workloads:
    if wl.definition != defn.name:
      raise ValueError(f"workload {wl.name!r} is for {wl.definition!r}, not {defn.name!r}")
    spec = defn.spec(wl)
    for sol in solutions:
      if sol.definition != defn.name:
        raise ValueError(f"solution {sol.name!r} is for {sol.definition!r}, not {defn.name!r}")
      s = None if seed is None else seed + n
      n += 1
      t = evaluate_one(defn, wl, sol, spec, interpret=interpret, timing_kw=kw, seed=s)
      t.heuristic = bool(heuristic(sol, wl))
      t.device, t.platform, t.versions = base
      traces.append(t)
      log(format_trace(t))
  return traces


_NOISE = ("For simplicity, JAX has removed", "Set JAX_TRACEBACK_FILTERING", "-----",
          "The preceding stack trace", "The above exception")


def _message(e: BaseException) -> str:
  """The first line of an exception's message that says something (JAX prefixes a note
  about filtered frames to errors raised while lowering)."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  lines = [ln for ln in lines if not ln.startswith(_NOISE)] or lines
  return lines[0] if lines else ""


def evaluate_one(defn: Definition, wl: Workload, sol: Solution, spec, *, interpret: bool,
                 timing_kw: dict, seed: Optional[int] = None) -> Trace:
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  t = Trace(definition=defn.name, workload=wl.to_json(), solution=sol.name,
            status="unsupported", bucket=tuned.spec_bucket(spec), config=sol.config,
            tolerance=defn.tolerance(wl), time=now)
  run_interpreted, why = dispatch.usable(sol.impl, spec, named=interpret)
  if why is not None:
    t.reason = why
    return t
  t.interpret = bool(run_interpreted)
  t.seed = secrets.randbits(31) if seed is None else seed
  try:
    a = defn.make(wl, t.seed)
    fn = jax.jit(lambda a: defn.call(wl, a))
    # The override stays on while timing: a retrace (e.g. a changed jax config) must
    # land on the same solution.
    with forced(sol.impl):
      t0 = time.perf_counter()
      out, lse = jax.block_until_ready(fn(a))
      t.compile_s = time.perf_counter() - t0
      ran = dispatch.chosen(defn.name)
      if ran is None or ran.split(" ")[0] != sol.name:
        raise RuntimeError(f"the dispatcher ran {ran!r}, not {sol.name!r}")
      t.max_error, t.lse_error = defn.check(wl, a, out, lse)
      del out, lse
      if not (t.max_error <= t.tolerance and t.lse_error <= 10 * t.tolerance):
        t.status = "incorrect"
        t.reason = (f"relative error {t.max_error:.3g} (lse {t.lse_error:.3g}) over "
                    f"tolerance {t.tolerance:g} ({10 * t.tolerance:g} for lse)")
        return t
      sets = [a] + [defn.make(wl, t.seed + 7919 * i)
                    for i in range(1, timing.num_input_sets(input_bytes(a)))]
      r = timing.bench(fn, [(x,) for x in sets], **timing_kw)
    t.median_ms, t.min_ms, t.max_ms = r.median_s * 1e3, r.min_s * 1e3, r.max_s * 1e3
    t.reps, t.calls = r.reps, r.calls
    t.status = "passed"
  except Exception as e:  # noqa: BLE001  (recorded in the trace)
    t.status, t.reason = "error", f"{type(e).__name__}: {_message(e)[:400]}"
  return t


def format_trace(t: Trace) -> str:
  head = f"  {t.workload_name or t.bucket:40s} {t.solution:54s}"
  if t.status == "passed":
    return (f"{head} {t.median_ms:10.4f} ms  err {t.max_error:.1e}"
            f"{'  (heuristic)' if t.heuristic else ''}")
  return f"{head} {t.status}: {t.reason}"
