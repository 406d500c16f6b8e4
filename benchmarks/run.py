"""Side-by-side benchmark of jattn and its peers on this machine, in one process.

  python -m benchmarks.run --suite prefill|decode|append|bwd|mla|block_sparse|all --out DIR [--quick]
         [--tiny] [--workloads PATTERNS] [--impls PATTERNS] [--deadline SECONDS]

Writes DIR/<date>-<gpu>.json (merged into an existing file of the same name per workload:
a workload this run measured takes this run's rows only, so its ratios compare rows of
one run), then the markdown table and the plot next to it (benchmarks.report).
Each row: device, JAX version, date, workload, shape, dtype, implementation, status, median
ms, TFLOP/s, GB/s, fraction of the roofline of the ceilings measured in this run, largest
relative error vs a float32 reference on slices, and speed relative to the best peer of the
same run (best peer time / this time; > 1 is faster), and for block-sparse rows the speed
relative to jattn's dense kernel on the same shape (`vs_baseline`); float8 rows instead
relate to their bf16 twin workload of the same run (`vs_bf16_jattn`: the twin's fastest
jattn row / this time; `vs_bf16_peer`: the twin's fastest peer / this time) and use the
float8 matmul ceiling. `--tiny` scales every workload down
for the CPU test; `--quick` times fewer repetitions (smoke runs).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import fnmatch
import gc
import json
import os
import re
import statistics
import sys
import time
import traceback
import uuid

import jax

import jattn
from benchmarks import check, impls, timing
from benchmarks import workloads as W

SUITES = ("prefill", "decode", "append", "bwd", "mla", "block_sparse")
ERR_FLAG = 2e-2      # bf16 outputs land near 4e-3; above this the row is flagged
ERR_FLAG_FP8 = 6e-2  # float8 prefill rounds P to e4m3 (~2.5 % expected)


def gpu_slug(device_kind: str) -> str:
  s = re.sub(r"^nvidia\s+", "", device_kind.strip().lower())
  return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "unknown"


def _matches(name: str, patterns) -> bool:
  return not patterns or any(fnmatch.fnmatch(name, p) for p in patterns)


def select(suite: str, workloads=None, tiny=False) -> list[W.Workload]:
  """The suite's workloads matching the patterns, in the patterns' order (so a run under a
  deadline reaches the ones listed first), else in the standard order."""
  wls = [w for w in W.STANDARD if (suite == "all" or w.kind == suite) and _matches(w.name, workloads)]
  if workloads:
    first = lambda w: next(i for i, p in enumerate(workloads) if fnmatch.fnmatch(w.name, p))
    wls.sort(key=first)
  return [W.tiny(w) for w in wls] if tiny else wls


def _short(e: BaseException) -> str:
  msg = str(e).strip().splitlines()
  head = msg[0] if msg else ""
  # XLA errors put the useful line last; keep both ends, bounded.
  tail = msg[-1] if len(msg) > 1 else ""
  text = f"{type(e).__name__}: {head}" + (f" ... {tail}" if tail and tail != head else "")
  return text[:400]


def measure(wl, data, label, family, build, ceil, cfg, span: bool = False):
  """-> (row, prep): the row, and the built function with its inputs when it timed
  (else None), for `interleave`."""
  ceil_tflops = ceil["matmul_fp8_tflops"] if wl.fp8 else ceil["matmul_tflops"]
  row = dict(workload=wl.name, suite=wl.suite, shape=wl.shape_str(), shape_info=wl.shape(),
             dtype="float8_e4m3fn" if wl.fp8 else jax.numpy.dtype(W.DTYPE).name, impl=label,
             family=family, status="ok", reason=None, note="", chosen=None,
             flops=wl.flops(), bytes=wl.bytes(), ceil_tflops=ceil_tflops,
             ceil_gbps=ceil["copy_gbps"], twin=wl.twin)
  try:
    t0 = time.time()
    prep = build(wl, data)
    row["note"] = prep.note
    row["input_sets"] = len(prep.args)
    row["setup_s"] = round(time.time() - t0, 2)     # inputs, plans, peers' set-up
    t = timing.bench(prep.fn, prep.args, **cfg)
    if prep.chosen is not None:
      row["chosen"] = prep.chosen()
    out = prep.canon(t.out)
    t.out = None
    # A baseline computes another function (dense attention beside a block-sparse
    # workload): its distance to this workload's reference is no error (not recorded).
    t0 = time.time()
    err = None if family == "baseline" else check.check(wl, data, out)
    row["check_s"] = round(time.time() - t0, 2)     # reference slices and the comparison
    del out
    sec = t.median_s
    if span:   # the device's clock beside the host's (--device-span)
      sp = timing.device_span(prep.fn, prep.args, calls=max(10, min(100, t.calls)))
      row["device_span"] = dict(
          span_ms=sp.get("span_s", float("nan")) * 1e3, busy_ms=sp.get("busy_s", float("nan")) * 1e3,
          kernels=sp.get("kernels"), error=sp.get("error"),
          by_kernel_ms={k[:80]: v * 1e3 for k, v in list(sp.get("by_kernel", {}).items())[:6]})
    flops = prep.flops or wl.flops()
    t_flops = flops / (ceil_tflops * 1e12)
    t_bytes = wl.bytes() / (ceil["copy_gbps"] * 1e9)
    row.update(median_ms=sec * 1e3, min_ms=t.min_s * 1e3, max_ms=t.max_s * 1e3,
               reps=t.reps, calls=t.calls, compile_s=round(t.compile_s, 2), flops=flops,
               tflops=flops / sec / 1e12, gbps=wl.bytes() / sec / 1e9,
               bound="compute" if t_flops >= t_bytes else "memory",
               frac_ceiling=max(t_flops, t_bytes) / sec,
               max_rel_err=err,
               err_flag=err is not None and not err <= (ERR_FLAG_FP8 if wl.fp8 else ERR_FLAG))
    return row, prep
  except impls.Unavailable as e:
    row.update(status="unavailable", reason=str(e))
  except NotImplementedError as e:
    row.update(status="unavailable", reason=_short(e))
  except Exception as e:  # noqa: BLE001  (the row records it; the run goes on)
    row.update(status="error", reason=_short(e))
    if os.environ.get("JATTN_BENCH_TRACEBACK"):
      traceback.print_exc()
  return row, None


INTERLEAVE_ROUNDS = 9


class Contenders:
  """While a workload's rows are measured: the fastest timed row of each family (jattn,
  peer, baseline) with its built function; a slower one is dropped at once, so a
  workload holds one function per family (no workload has both peers and a baseline)."""

  def __init__(self):
    self.best = {}   # family -> (row, prep)

  def offer(self, row, prep):
    if prep is None or row["status"] != "ok" or row.get("err_flag") or row.get("twin"):
      return
    held = self.best.get(row["family"])
    if held is None or row["median_ms"] < held[0]["median_ms"]:
      self.best[row["family"]] = (row, prep)


def interleave(contenders: Contenders, rounds: int = INTERLEAVE_ROUNDS) -> None:
  """Time the fastest jattn row against the fastest peer (else the baseline) in alternating
  repetitions (A B, then B A, ...), so that the GPU's clock drift over the workload falls
  on both alike: row["interleaved"] = {vs, ratio: median over rounds of (other / jattn),
  ms, other_ms: medians, rounds}. The rows' own figures stay the sequential ones."""
  mine = contenders.best.get("jattn")
  other = contenders.best.get("peer") or contenders.best.get("baseline")
  if mine is None or other is None:
    return
  (a, pa), (b, pb) = mine, other
  ta, tb = [], []
  for i in range(rounds):
    for row, prep, out in ((a, pa, ta), (b, pb, tb))[::1 if i % 2 == 0 else -1]:
      out.append(timing.time_reps(prep.fn, prep.args, row["calls"]))
  a["interleaved"] = dict(vs=b["impl"], rounds=rounds,
                          ratio=statistics.median(y / x for x, y in zip(ta, tb)),
                          ms=statistics.median(ta) * 1e3, other_ms=statistics.median(tb) * 1e3)
  i = a["interleaved"]
  print(f"  interleaved: {a['impl']} {i['ms']:.3f} ms vs {i['vs']} {i['other_ms']:.3f} ms, "
        f"{i['ratio']:.3f}x ({rounds} rounds)", flush=True)


def best_peer_ratios(rows: list[dict]) -> None:
  """vs_best_peer = (fastest peer of the same run and workload) / this time;
  vs_baseline = (the baseline row of the same run and workload) / this time; for a
  float8 row, vs_bf16_jattn / vs_bf16_peer = (fastest jattn row / fastest peer of its
  bf16 twin workload, same run) / this time. A row flagged for its error is never the
  best of anything."""
  best = {}
  for r in rows:
    if r["status"] == "ok" and not r.get("err_flag"):
      k = (r["family"], r["run_id"], r["workload"])
      best[k] = min(best.get(k, float("inf")), r["median_ms"])
  for r in rows:
    ok = r["status"] == "ok"
    for fam, key, w in (("peer", "vs_best_peer", r["workload"]),
                        ("baseline", "vs_baseline", r["workload"]),
                        ("jattn", "vs_bf16_jattn", r.get("twin")),
                        ("peer", "vs_bf16_peer", r.get("twin"))):
      b = best.get((fam, r.get("run_id"), w)) if w else None
      r[key] = (b / r["median_ms"]) if (b and ok) else None


def merge(path: str, meta: dict, rows: list[dict]) -> dict:
  old = {"runs": [], "rows": []}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  # Ratios compare rows of one run only, so a workload's rows come from one run: a
  # workload this run measured (any row not skipped) takes this run's rows and drops the
  # earlier ones, unless this run never reached its peers and the earlier run did (a
  # deadline cut it short); a workload this run did not measure keeps its earlier rows.
  def by_workload(rs):
    out = collections.defaultdict(list)
    for r in rs:
      out[r["workload"]].append(r)
    return out
  peered = lambda rs: any(r["family"] == "peer" and r["status"] == "ok" for r in rs)
  old_w, new_w = by_workload(old["rows"]), by_workload(rows)
  merged = []
  for w in list(old_w) + [w for w in new_w if w not in old_w]:
    new, earlier = new_w.get(w, []), old_w.get(w, [])
    measured = any(r["status"] != "skipped" for r in new)
    if new and (not earlier or (measured and (peered(new) or not peered(earlier)))):
      merged += new
    else:
      merged += earlier
  live = {r["run_id"] for r in merged}
  runs = [m for m in old["runs"] if m["run_id"] in live and m["run_id"] != meta["run_id"]]
  res = {"runs": runs + [meta], "rows": merged}
  best_peer_ratios(res["rows"])
  order = {w.name: i for i, w in enumerate(W.STANDARD)}
  res["rows"].sort(key=lambda r: order.get(r["workload"], 99))
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(res, f, indent=1, default=float)
  os.replace(tmp, path)
  return res


def _fmt(r) -> str:
  if r["status"] != "ok":
    return f"  {r['impl']:28s} {r['status']}: {r['reason']}"
  from benchmarks.report import num
  metric = (f"{num(r['tflops']):>7s} TFLOP/s" if r["bound"] == "compute"
            else f"{num(r['gbps']):>7s} GB/s   ")
  chosen = f" ({r['chosen']})" if r.get("chosen") else ""
  err = (f"err {r['max_rel_err']:.1e}{' !' if r['err_flag'] else ''}"
         if r["max_rel_err"] is not None else "err n/a (baseline: another op)")
  line = (f"  {r['impl']:28s} {r['median_ms']:9.3f} ms {metric} {r['frac_ceiling']:6.1%}"
          f"  {err}  compile {r['compile_s']:.1f}s setup {r['setup_s']:.1f}s "
          f"check {r['check_s']:.1f}s{chosen}")
  sp = r.get("device_span")
  if sp:
    kern = ", ".join(f"{k[:40]} {v * 1e3:.1f}" for k, v in sp["by_kernel_ms"].items())
    line += (f"\n    device clock: span {sp['span_ms']:.3f} ms, kernels {sp['busy_ms']:.3f} ms "
             f"({sp['kernels']} a call; us: {kern})" if not sp.get("error") else
             f"\n    device clock: {sp['error']}")
  return line


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--suite", default="all", choices=SUITES + ("all",))
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke runs)")
  ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU test of the harness)")
  ap.add_argument("--workloads", default="",
                  help="comma-separated fnmatch patterns; workloads run in this order")
  ap.add_argument("--impls", default="", help="comma-separated fnmatch patterns, e.g. 'jattn.*,cudnn'")
  ap.add_argument("--deadline", type=float, default=0,
                  help="seconds; workloads not started by then are recorded as skipped")
  ap.add_argument("--xla-cap-gib", type=float, default=impls.XLA_CAP_GIB["fwd"],
                  help="largest float32 intermediate the forward XLA reference may build")
  ap.add_argument("--no-report", action="store_true", help="JSON only")
  ap.add_argument("--device-span", action="store_true",
                  help="also time each row by the device's clock (profiler kernel records: "
                       "span and kernel time per call, the largest kernels)")
  args = ap.parse_args(argv)

  start = time.time()
  impls.XLA_CAP_GIB["fwd"] = args.xla_cap_gib
  pats = [p for p in args.workloads.split(",") if p]
  ipats = [p for p in args.impls.split(",") if p]
  wls = select(args.suite, pats, args.tiny)
  if not wls:
    print(f"no workload matches suite={args.suite} workloads={pats}", file=sys.stderr)
    return 2
  if args.tiny:
    cfg = dict(reps=2, max_calls=3, budget_s=0.05)
  elif args.quick:
    cfg = dict(reps=3, max_calls=100, budget_s=0.5, rep_s=timing.REP_S)
  else:
    cfg = dict(reps=7, max_calls=timing.MAX_CALLS, budget_s=1.5, rep_s=timing.REP_S)

  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
  slug = gpu_slug(kind) if dev.platform == "gpu" else dev.platform
  name = f"{date}-{slug}" + ("-tiny" if args.tiny else "")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, name + ".json")

  print(f"# device {kind} | jax {jax.__version__} | jattn {jattn.__version__} | {date}", flush=True)
  ceil = timing.ceilings(tiny=args.tiny, reps=cfg["reps"])
  print(f"# ceilings: copy {ceil['copy_gbps']:.0f} GB/s (read+write), "
        f"read-only {ceil['read_gbps']:.0f} GB/s, "
        f"bf16 matmul {ceil['matmul_n']}^3 {ceil['matmul_tflops']:.0f} TFLOP/s "
        f"({time.time() - start:.1f}s)", flush=True)
  tk, why = impls.import_tokamax()
  meta = dict(run_id=uuid.uuid4().hex[:8], device=kind, platform=dev.platform,
              jax_version=jax.__version__, jattn_version=jattn.__version__, date=date,
              started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              argv=sys.argv[1:] if argv is None else list(argv), timing=cfg, tiny=args.tiny,
              quick=args.quick, ceilings=ceil,
              tokamax=getattr(tk, "__version__", None) if tk else why)
  base = dict(device=kind, jax_version=jax.__version__, date=date, run_id=meta["run_id"])

  rows = []
  for wl in wls:
    print(f"\n## {wl.name}  [{wl.shape_str()}]", flush=True)
    t_wl = time.time()
    data = impls.Data(wl)
    auto = {}
    if not args.deadline or time.time() - start < args.deadline:
      auto = {op: impls.auto_choice(wl, data, op) for op in impls.jattn_ops(wl)}
    t_auto = time.time() - t_wl    # the auto-dispatch choice (lazy inputs may start here)
    contenders = Contenders()
    for label, family, build in impls.entries(wl):
      if not _matches(label, ipats):
        continue
      if args.deadline and time.time() - start > args.deadline:
        r = dict(workload=wl.name, suite=wl.suite, shape=wl.shape_str(), shape_info=wl.shape(),
                 impl=label, family=family, status="skipped",
                 reason=f"--deadline {args.deadline:g}s reached")
      else:
        r, prep = measure(wl, data, label, family, build, ceil, cfg, args.device_span)
        contenders.offer(r, prep)
        del prep
        if family == "jattn":
          r["auto"] = auto.get(label.split("[")[0].split(".")[1])
      r.update(base)
      rows.append(r)
      print(_fmt(r), flush=True)
      gc.collect()
    interleave(contenders)
    del contenders
    del data
    gc.collect()
    print(f"  ({time.time() - t_wl:.1f}s; before the rows {t_auto:.1f}s)", flush=True)
    meta["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta["wall_s"] = round(time.time() - start, 1)
    res = merge(path, meta, rows)

  print(f"\n# wrote {path} ({len(rows)} rows, {time.time() - start:.0f}s)", flush=True)
  if not args.no_report:
    from benchmarks import report
    md, png = report.write(path)
    print(f"# wrote {md}" + (f" and {png}" if png else ""), flush=True)
    print("\n" + report.summary_table(res), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
