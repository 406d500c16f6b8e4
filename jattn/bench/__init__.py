"""jattn.bench: definitions, workloads, solutions and traces; evaluation, autotuning and
`apply` (serve each shape with the fastest correct solution). See jattn/bench/README.md.

  Definition  an op's contract: inputs/outputs, the reference (jattn.reference),
              tolerances, fresh random inputs, the public call (`DEFINITIONS`)
  Workload    concrete shapes, dtype, mask and lengths of one call (JSON)
  Solution    a candidate: a callable with the op's uniform signature, a capability
              check, platforms; Pallas kernels contribute one per config point
  Trace       device, versions, workload, solution, config, max error, median time,
              status; stored as JSON lines
  evaluate    check each solution against the reference on fresh random inputs, then
              time it; a failing solution is never timed and never dispatched
  apply       `with jattn.apply(traces):` dispatches every op to the best solution per
              shape bucket
  tune        `python -m jattn.bench tune`: search the kernels' config spaces and write
              the tuned table the kernels read (jattn/tuned/<gpu>.json)
"""

from jattn.bench.apply import Applied, apply, best_solutions
from jattn.bench.definitions import (DEFINITIONS, Definition, Workload, definition,
                                     load_workloads)
from jattn.bench.evaluate import Trace, evaluate, load_traces, save_traces
from jattn.bench.solutions import SPACES, ConfigSpace, Solution, registered

__all__ = ["Applied", "apply", "best_solutions", "DEFINITIONS", "Definition", "Workload",
           "definition", "load_workloads", "Trace", "evaluate", "load_traces", "save_traces",
           "SPACES", "ConfigSpace", "Solution", "registered"]
