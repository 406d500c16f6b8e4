"""Autotuning: time every point of each Pallas kernel's config space on the harness
workloads (correctness first), keep the traces, and distill the winners per shape bucket
into the tuned table the kernels read (`jattn/tuned/<gpu>.json`).

Which op is tuned on which harness workload (`benchmarks/workloads.py`): prefill ->
attention (dense); append -> prefill (paged) and attention; decode -> decode (plan made
inside the op, as `jattn.decode(...)` without `plan=`); bwd -> nothing (the backward
kernels take no tuned config yet).
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import statistics
import time
from typing import Callable, Iterable, Optional

import jax

from jattn import tuned
from jattn.bench.definitions import Workload, definition
from jattn.bench.evaluate import (TIMING, TIMING_TINY, Trace, evaluate, load_traces,
                                  save_traces, versions)
from jattn.bench.solutions import SPACES, registered

OPS_BY_KIND = {"prefill": ("attention",), "append": ("prefill", "attention"),
               "decode": ("decode",), "bwd": ()}


def harness_workloads(suite: str = "all", patterns: Iterable[str] = (),
                      tiny: bool = False) -> list[Workload]:
  """The harness's standard workloads (benchmarks/workloads.py, in a jattn checkout) as
  bench workloads, one per op tuned on them (named like the harness's)."""
  try:
    from benchmarks import workloads as W
  except ImportError as e:
    raise SystemExit("the harness workloads live in benchmarks/ of a jattn checkout: run from "
                     f"its root (PYTHONPATH=.) or pass --workloads-file ({e})") from None
  pats = list(patterns)
  out = []
  for wl in W.STANDARD:
    if suite not in ("all", wl.kind) or (pats and not any(fnmatch.fnmatch(wl.name, p)
                                                          for p in pats)):
      continue
    if wl.fp8:   # bench workloads have no float8 inputs (yet)
      continue
    wl = W.tiny(wl) if tiny else wl
    lens = tuple(int(x) for x in wl.kv_lens())
    common = dict(batch=wl.batch, num_q_heads=wl.num_q_heads, num_kv_heads=wl.num_kv_heads,
                  head_dim=wl.head_dim, causal=wl.causal, window=wl.window, name=wl.name)
    for op in OPS_BY_KIND[wl.kind]:
      if op == "attention":
        out.append(Workload("attention", q_len=wl.q_len, kv_len=wl.kv_len, **common))
      elif op == "prefill":
        out.append(Workload("prefill", q_len=wl.q_len, kv_len=wl.kv_len,
                            q_lens=(wl.q_len,) * wl.batch, kv_lens=lens, page_size=wl.pages,
                            **common))
      else:
        out.append(Workload("decode", q_len=1, kv_len=wl.kv_len,
                            kv_lens=lens if wl.skewed else None, page_size=wl.pages, **common))
  return out


def done_keys(traces: Iterable[Trace]) -> set:
  return {(t.device, t.definition, t.workload_name, t.solution) for t in traces}


def tune(workloads: Iterable[Workload], traces_path: str, *, tiny: bool = False,
         interpret: Optional[bool] = None, peers: bool = False, deadline: float = 0,
         fresh: bool = False, log: Callable[[str], None] = print) -> list[Trace]:
  """Evaluate each workload's config points (and with `peers`, the op's other registered
  implementations), appending every trace to `traces_path` as it is made. Pairs already
  in the file for this device are skipped unless `fresh` (runs resume). Stops starting
  new work after `deadline` seconds. `interpret`: run Pallas points interpreted off-GPU
  (else they are "unsupported" there; default: on the CPU). Returns all traces of the file."""
  start = time.time()
  on_gpu = jax.default_backend() == "gpu"
  # A GPU runs Pallas points compiled whatever the flag, so the heuristic is the GPU's too.
  interpret = (not on_gpu) if interpret is None else (interpret and not on_gpu)
  if fresh and os.path.exists(traces_path):
    os.remove(traces_path)
  done = done_keys(load_traces(traces_path))
  device = tuned.device_kind()
  timing_kw = TIMING_TINY if tiny else TIMING
  with tuned.use(None):   # the heuristic is timed as itself, not as an older table's pick
    for wl in workloads:
      if deadline and time.time() - start > deadline:
        log(f"# --deadline {deadline:g}s reached: {wl.definition} {wl.name} and later not started")
        break
      defn = definition(wl.definition)
      spec = defn.spec(wl)
      space = SPACES.get(wl.definition)
      cands = [] if space is None else space.candidates(spec, wl, tiny=tiny, interpret=interpret)
      sols = [space.solution(cfg) for cfg, _ in cands]
      heur = {space.solution(cfg).name for cfg, is_h in cands if is_h} if cands else set()
      if peers:
        sols += [s for name, s in registered(wl.definition).items()
                 if name != (space.impl if space else None)]
      sols = [s for s in sols if (device, wl.definition, wl.name, s.name) not in done]
      log(f"\n## {wl.definition} {wl.name} [{tuned.spec_bucket(spec)}]: {len(sols)} to run")
      for sol in sols:
        if deadline and time.time() - start > deadline:
          log(f"# --deadline {deadline:g}s reached")
          break
        (t,) = evaluate(defn, [wl], [sol], interpret=interpret, timing_kw=timing_kw,
                        heuristic=lambda s, w: s.name in heur, log=log)
        save_traces(traces_path, [t])
  return load_traces(traces_path)


def build_table(traces: Iterable[Trace], device: str, traces_file: str = "") -> dict:
  """The tuned table from the passed config-point traces of `device`: per bucket the
  fastest point (mean median over the bucket's workloads), next to the heuristic's time.
  A point with any incorrect trace on this device is never a winner."""
  traces = [t for t in traces if t.device == device and t.config is not None]
  bad = {(t.definition, t.solution) for t in traces if t.status == "incorrect"}
  groups: dict = {}
  for t in traces:
    if t.status == "passed" and (t.definition, t.solution) not in bad:
      groups.setdefault(t.bucket, {}).setdefault(t.solution, []).append(t)
  entries = {}
  for bucket, by_sol in sorted(groups.items()):
    ms = {name: statistics.fmean(t.median_ms for t in ts) for name, ts in by_sol.items()}
    win = min(ms, key=ms.get)
    heur = [name for name, ts in by_sol.items() if any(t.heuristic for t in ts)]
    first = by_sol[win][0]
    entries[bucket] = dict(
        kernel=win.split("[")[0], definition=first.definition, config=first.config,
        median_ms=round(ms[win], 5),
        heuristic_ms=round(ms[heur[0]], 5) if heur else None,
        heuristic_config=by_sol[heur[0]][0].config if heur else None,
        workloads=sorted({t.workload_name for t in by_sol[win]}),
        max_error=max(t.max_error for t in by_sol[win]), points_timed=len(ms))
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  return {"format": tuned.FORMAT, "device": device, "generated": now, **versions(),
          "traces": traces_file,
          "note": "written by `python -m jattn.bench tune` from the traces named here; "
                  "do not edit by hand",
          "entries": entries}


def write_table(table: dict, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(table, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
