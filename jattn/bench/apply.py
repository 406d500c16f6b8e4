"""`jattn.apply(traces)`: serve each shape with the fastest correct solution.

    with jattn.apply("traces.jsonl", solutions=[my_solution]):
      out = jax.jit(model)(x)       # traced here: every jattn op dispatches through the traces

Rules, per definition (op) and shape bucket (`jattn.tuned.spec_bucket` of the call):
  * only traces measured on this device kind are read (`device="any"` reads all);
  * a solution with any "incorrect" trace for a definition is never chosen for it;
  * the choice is the solution with the lowest mean median time over its "passed"
    traces in that bucket;
  * a bucket without a passed trace, or a chosen solution whose check refuses the call,
    falls through to the dispatcher's priorities (the reason is logged).
Solutions are found by name: those passed in, a kernel config point (from the trace's
config), or a registered implementation; a name found nowhere is skipped and listed in
`Applied.unresolved`. Dispatch happens at trace time: functions jitted and traced
before the `with` keep their earlier choice.
"""

from __future__ import annotations

import collections
import statistics
from typing import Iterable, Optional, Union

from jattn import dispatch, tuned
from jattn.bench.evaluate import Trace, load_traces
from jattn.bench.solutions import Solution, resolve


def best_solutions(traces: Iterable[Trace], device: Optional[str] = None) -> dict:
  """{(definition, bucket): (solution name, config, mean median ms)} by the rules above.
  `device`: a device kind, "any", or None for this device."""
  device = tuned.device_kind() if device is None else device
  traces = [t for t in traces if device == "any" or t.device == device]
  bad = {(t.definition, t.solution) for t in traces if t.status == "incorrect"}
  times = collections.defaultdict(list)
  configs = {}
  for t in traces:
    if t.status == "passed" and (t.definition, t.solution) not in bad:
      times[(t.definition, t.bucket, t.solution)].append(t.median_ms)
      configs[(t.definition, t.solution)] = t.config
  best = {}
  for (op, bucket, name), ms in sorted(times.items()):
    mean = statistics.fmean(ms)
    if (op, bucket) not in best or mean < best[(op, bucket)][2]:
      best[(op, bucket)] = (name, configs[(op, name)], mean)
  return best


class Applied:
  """The choices made from a set of traces; a context manager installing them."""

  def __init__(self, traces: Union[str, Iterable[Trace]], solutions: Iterable[Solution] = (),
               device: Optional[str] = None):
    traces = load_traces(traces) if isinstance(traces, str) else list(traces)
    by_name = collections.defaultdict(dict)
    for s in solutions:
      by_name[s.definition][s.name] = s
    self.choices: dict[tuple[str, str], Solution] = {}
    self.times: dict[tuple[str, str], float] = {}
    self.unresolved: list[str] = []
    for (op, bucket), (name, config, ms) in best_solutions(traces, device).items():
      sol = resolve(op, name, config, by_name[op])
      if sol is None:
        self.unresolved.append(f"{op}: {name}")
        continue
      self.choices[(op, bucket)] = sol
      self.times[(op, bucket)] = ms
    self._stack = []

  def choose(self, spec: dispatch.Spec) -> Optional[dispatch.Impl]:
    """The dispatcher override: the chosen solution's Impl for this call, or None."""
    sol = self.choices.get((spec.op, tuned.spec_bucket(spec)))
    return None if sol is None else sol.impl

  def __enter__(self) -> "Applied":
    cm = dispatch.override(self.choose)
    cm.__enter__()
    self._stack.append(cm)
    return self

  def __exit__(self, *exc):
    return self._stack.pop().__exit__(*exc)

  def __repr__(self):
    rows = [f"  {op} {bucket}: {sol.name} ({self.times[(op, bucket)]:.4g} ms)"
            for (op, bucket), sol in sorted(self.choices.items())]
    return "Applied(\n" + "\n".join(rows) + "\n)"


def apply(traces: Union[str, Iterable[Trace]], solutions: Iterable[Solution] = (), *,
          device: Optional[str] = None) -> Applied:
  """Dispatch each definition's calls to the best solution per shape bucket in `traces`
  (a list of `Trace` or a JSON-lines path) inside `with jattn.apply(...):`."""
  return Applied(traces, solutions, device)
