"""python -m jattn.bench tune|table|show (see jattn/bench/README.md).

  tune   time every config point of the Pallas kernels on the harness workloads (checked
         first), append the traces, write the tuned table:
           python -m jattn.bench tune --suite all            (on the GPU; writes
                                                              jattn/tuned/<gpu>.json)
           python -m jattn.bench tune --tiny --interpret --out /tmp/t.json   (CPU check)
  table  rebuild a table from a traces file
  show   summarize a traces file
"""

from __future__ import annotations

import argparse
import os
import sys

from jattn import tuned


def _in_package(path: str) -> bool:
  return os.path.dirname(os.path.abspath(path)) == tuned.DIR


def _tune(args) -> int:
  from jattn.bench import definitions, tune
  kind = tuned.device_kind()
  on_gpu = kind != "cpu" and not args.interpret and not args.tiny
  out = args.out or (tuned.path_for(kind) if on_gpu else None)
  if out is None:
    print("--out is required off-GPU and with --tiny/--interpret (the tables in "
          f"{tuned.DIR} come from real GPU runs only)", file=sys.stderr)
    return 2
  if _in_package(out) and not on_gpu:
    print(f"refusing to write {out}: tables in the package come from real GPU runs only",
          file=sys.stderr)
    return 2
  traces = args.traces or os.path.splitext(out)[0] + ".traces.jsonl"
  if args.workloads_file:
    wls = definitions.load_workloads(args.workloads_file)
  else:
    wls = tune.harness_workloads(args.suite, [p for p in args.workloads.split(",") if p],
                                 args.tiny)
  if args.ops:
    wls = [w for w in wls if w.definition in args.ops.split(",")]
  print(f"# device {kind} | {len(wls)} workloads | traces {traces} | table {out}", flush=True)
  all_traces = tune.tune(wls, traces, tiny=args.tiny, interpret=args.interpret,
                         peers=args.peers, deadline=args.deadline, fresh=args.fresh,
                         log=lambda m: print(m, flush=True))
  table = tune.build_table(all_traces, kind, os.path.basename(traces))
  tune.write_table(table, out)
  print(f"\n# wrote {out} ({len(table['entries'])} entries from {len(all_traces)} traces)")
  for key, e in sorted(table["entries"].items()):
    gain = (f"{e['heuristic_ms'] / e['median_ms']:.3f}x heuristic" if e["heuristic_ms"]
            else "no heuristic time")
    print(f"  {key}: {e['config']} {e['median_ms']:.4f} ms ({gain})")
  return 0


def _table(args) -> int:
  from jattn.bench import load_traces, tune
  traces = load_traces(args.traces)
  device = args.device or next((t.device for t in traces), "")
  if _in_package(args.out) and device == "cpu":
    print(f"refusing to write {args.out}: tables in the package come from GPU runs only",
          file=sys.stderr)
    return 2
  tune.write_table(tune.build_table(traces, device, os.path.basename(args.traces)), args.out)
  print(f"# wrote {args.out}")
  return 0


def _show(args) -> int:
  from jattn.bench.evaluate import format_trace, load_traces
  for t in load_traces(args.traces):
    print(f"{t.device[:24]:24s} {t.definition:15s}" + format_trace(t))
  return 0


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m jattn.bench", description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  t = sub.add_parser("tune", help="search the Pallas kernels' config spaces")
  t.add_argument("--suite", default="all", choices=("all", "prefill", "decode", "append", "bwd"))
  t.add_argument("--workloads", default="", help="comma-separated fnmatch patterns of names")
  t.add_argument("--workloads-file", default="", help="JSON list of jattn.bench.Workload")
  t.add_argument("--ops", default="", help="only these definitions (comma-separated)")
  t.add_argument("--out", default="", help="table path (default on a GPU: jattn/tuned/<gpu>.json)")
  t.add_argument("--traces", default="", help="traces path (default: <out>.traces.jsonl)")
  t.add_argument("--tiny", action="store_true", help="tiny shapes, tiny spaces (CPU check)")
  t.add_argument("--interpret", action="store_true", help="run Pallas kernels interpreted")
  t.add_argument("--peers", action="store_true", help="also time the op's other implementations")
  t.add_argument("--deadline", type=float, default=0, help="seconds; start nothing after")
  t.add_argument("--fresh", action="store_true", help="drop earlier traces instead of resuming")
  t.set_defaults(run=_tune)
  b = sub.add_parser("table", help="rebuild a table from traces")
  b.add_argument("--traces", required=True)
  b.add_argument("--out", required=True)
  b.add_argument("--device", default="", help="device kind (default: the traces' first)")
  b.set_defaults(run=_table)
  s = sub.add_parser("show", help="print a traces file")
  s.add_argument("traces")
  s.set_defaults(run=_show)
  args = ap.parse_args(argv)
  return args.run(args)


if __name__ == "__main__":
  sys.exit(main())
