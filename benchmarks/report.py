"""Markdown table and plot from a results JSON written by `benchmarks.run`.

  python -m benchmarks.report benchmarks/results/<date>-<gpu>.json [--readme README.md]

Writes <date>-<gpu>.md (summary, details per suite, reasons for every row that was not
timed) and <date>-<gpu>.png (fraction of the roofline per workload and implementation)
next to the JSON. With --readme, replaces the text between the README's markers
`<!-- bench:begin -->` and `<!-- bench:end -->` with the summary table. Every number
comes from the JSON; nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SUITE_TITLES = {"prefill": "Prefill (dense forward)", "decode": "Decode (paged, one query)",
                "append": "Append (new queries onto a cached prefix)",
                "bwd": "Backward (forward + backward)",
                "mla": "MLA decode (absorbed, paged latent cache)",
                "block_sparse": "Block-sparse (non-causal, random per-head layout)"}


def load(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _impls(rows) -> list[str]:
  """Implementation labels in a stable order: jattn first, then baselines and peers."""
  seen = []
  for fam in ("jattn", "baseline", "peer"):
    for r in rows:
      if r["family"] == fam and r["impl"] not in seen:
        seen.append(r["impl"])
  return seen


def _workloads(rows) -> list[str]:
  out = []
  for r in rows:
    if r["workload"] not in out:
      out.append(r["workload"])
  return out


def num(x: float) -> str:
  """Whole numbers from 10 up, three significant digits below (tiny CPU runs)."""
  return f"{x:.0f}" if abs(x) >= 10 else f"{x:.3g}"


def _metric(r) -> str:
  if r["bound"] == "compute":
    return f"{num(r['tflops'])} TFLOP/s"
  return f"{num(r['gbps'])} GB/s"


def _cell(r) -> str:
  if r is None:
    return ""
  if r["status"] != "ok":
    return "—"
  flag = " ⚠" if _flagged(r) else ""
  return f"{_metric(r)} ({100 * r['frac_ceiling']:.0f}%){flag}"


def _flagged(r) -> bool:
  """Error above the run's flag. A baseline row computes another function (jattn's dense
  kernel beside a block-sparse workload), so its distance to the workload's reference is
  no error; runs before that rule still carry a value and the flag for it."""
  return bool(r.get("err_flag")) and r.get("family") != "baseline"


def header(res) -> str:
  lines = []
  for m in res["runs"]:
    c = m["ceilings"]
    lines.append(
        f"- {m['date']} · **{m['device']}** · JAX {m['jax_version']} · jattn {m['jattn_version']}"
        f" · tokamax {m['tokamax'] if m['tokamax'] and 'not importable' not in str(m['tokamax']) else 'absent'}"
        f" · ceilings measured in the same run: copy {c['copy_gbps']:.0f} GB/s (read+write)"
        + (f", read-only {c['read_gbps']:.0f} GB/s" if c.get("read_gbps") else "") + ","
        f" bf16 matmul {c['matmul_n']}³ {c['matmul_tflops']:.0f} TFLOP/s"
        + (f", float8 {c['matmul_fp8_tflops']:.0f}" if c.get("matmul_fp8_tflops") else "")
        + f" · {m['timing']['reps']} reps × ≤{m['timing']['max_calls']} calls"
        + (f" (~{m['timing']['rep_s'] * 1e3:.0f} ms)" if m["timing"].get("rep_s") else "")
        + (" · QUICK" if m.get("quick") else "") + (" · TINY (CPU test)" if m.get("tiny") else "")
        + f" · run `{m['run_id']}`")
  return "\n".join(lines)


def summary_table(res) -> str:
  """Workloads x implementations: achieved TFLOP/s (compute-bound) or GB/s (memory-bound)
  and, in brackets, the fraction of the roofline of the measured ceilings."""
  rows = res["rows"]
  impls = _impls([r for r in rows if r["status"] == "ok"])  # columns that timed something
  by = {(r["workload"], r["impl"]): r for r in rows}
  out = ["| workload | " + " | ".join(impls) + " | best jattn vs best peer |",
         "|---" * (len(impls) + 2) + "|"]
  for w in _workloads([r for r in rows if r["status"] == "ok"]):  # (the rest: notes)
    mine = [by[(w, i)] for i in impls if (w, i) in by and by[(w, i)]["family"] == "jattn"
            and not _flagged(by[(w, i)])]      # a row with a wrong result is no one's best
    ratios = [r["vs_best_peer"] for r in mine if r.get("vs_best_peer")]
    base = [r["vs_baseline"] for r in mine if r.get("vs_baseline")]
    twin = [(r.get("vs_bf16_jattn"), r.get("vs_bf16_peer")) for r in mine
            if r.get("vs_bf16_jattn")]
    peers = [r for r in rows if r["workload"] == w and r["family"] == "peer"
             and r["status"] == "ok" and not _flagged(r)]
    fastest = min(peers, key=lambda r: r["median_ms"])["impl"] if peers else None
    best = (f"{max(ratios):.2f}× ({fastest})" if ratios else
            f"{max(base):.2f}× vs dense" if base else
            _twin_cell(twin) if twin else "—")
    best += "".join(f"; {_interleaved(r)}" for r in mine if r.get("interleaved"))
    out.append(f"| `{w}` | " + " | ".join(_cell(by.get((w, i))) for i in impls) + f" | {best} |")
  return "\n".join(out)


def _interleaved(r) -> str:
  """The ratio of a row's alternating repetitions against its closest rival
  (`benchmarks.run.interleave`)."""
  i = r["interleaved"]
  return f"interleaved {i['ratio']:.2f}× vs {i['vs']}"


def _twin_cell(twin) -> str:
  """A float8 workload: its fastest jattn row against the bf16 twin's fastest jattn row
  and fastest peer (same run)."""
  jt = max(j for j, _ in twin)
  peers = [p for _, p in twin if p]
  return f"{jt:.2f}× bf16 jattn" + (f", {max(peers):.2f}× bf16 peer" if peers else "")


def detail_tables(res) -> str:
  rows = res["rows"]
  parts = []
  for suite, title in SUITE_TITLES.items():
    rs = [r for r in rows if r["suite"] == suite]
    if not rs:
      continue
    parts += [f"### {title}", "",
              "| workload | shape | impl | ms | TFLOP/s | GB/s | % roofline | rel err | × best peer | compile s | chosen |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
      if r["status"] != "ok":
        parts.append(f"| `{r['workload']}` | {r['shape']} | {r['impl']} | {r['status']} "
                     "| | | | | | | |")
        continue
      vs = (f"{r['vs_best_peer']:.2f}" if r.get("vs_best_peer") else
            f"{r['vs_baseline']:.2f} vs dense" if r.get("vs_baseline") else
            f"{r['vs_bf16_jattn']:.2f} vs bf16 jattn" if r.get("vs_bf16_jattn") else "")
      if r.get("interleaved"):
        vs += f" ({_interleaved(r)})"
      err = ("n/a (other op)" if r.get("family") == "baseline" else
             f"{r['max_rel_err']:.1e}" + (" ⚠" if _flagged(r) else ""))
      chosen = r.get("chosen") or ""
      parts.append(
          f"| `{r['workload']}` | {r['shape']} | {r['impl']} | {r['median_ms']:.3f} "
          f"| {num(r['tflops'])} | {num(r['gbps'])} | {100 * r['frac_ceiling']:.1f} | {err} "
          f"| {vs} | {r['compile_s']:.1f} | {chosen} |")
    parts.append("")
  return "\n".join(parts)


def notes(res) -> str:
  lines = []
  for r in res["rows"]:
    if r["status"] != "ok":
      lines.append(f"- `{r['workload']}` · {r['impl']} · {r['status']}: {r['reason']}")
    elif r.get("note"):
      lines.append(f"- `{r['workload']}` · {r['impl']}: {r['note']}")
  return "\n".join(lines)


def markdown(res) -> str:
  return "\n".join([
      "# jattn benchmarks", "", header(res), "",
      "Generated by `python -m benchmarks.report` from the JSON beside this file; do not edit.",
      "Cells: achieved TFLOP/s (compute-bound workloads) or GB/s (memory-bound: decode) and,"
      " in brackets, the fraction of the roofline of the ceilings measured in the same run."
      " The memory ceiling is the copy rate (read+write), the issues' yardstick; a kernel"
      " that only reads can pass 100 % of it (the read-only rate is in the header)."
      " FLOPs count visible (query, key) pairs only (causal ≈ half); bwd = 3.5× forward;"
      " bytes = Q + K + V (valid tokens) + O once. ⚠ = relative error above 2e-2."
      " `× best peer` = fastest peer's time / this time (> 1: faster than every peer; the"
      " summary names that peer);"
      " block-sparse rows instead compare with jattn's dense kernel on the same shape"
      " (`vs dense`); `_fp8` rows (float8 inputs, roofline of the float8 matmul) compare"
      " with their bf16 twin workload's fastest jattn row and fastest peer."
      " `interleaved` (runs from session 19 on): the fastest jattn row and its closest"
      " rival (the fastest peer, or the dense kernel) timed again in alternating"
      " repetitions, the median of their per-round ratio: the GPU's clock drift over a"
      " workload falls on both alike, so this ratio is the steadier one.", "",
      "## Summary", "", summary_table(res), "", "## Details", "", detail_tables(res),
      "## Rows not timed, and notes", "", notes(res) or "(none)", ""])


def plot(res, path: str):
  """Horizontal grouped bars: fraction of the roofline, one group per workload."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except Exception as e:  # noqa: BLE001
    print(f"report: no plot ({type(e).__name__}: {e})", file=sys.stderr)
    return None
  rows = [r for r in res["rows"] if r["status"] == "ok"]
  if not rows:
    return None
  impls = _impls(rows)
  wls = _workloads(rows)
  by = {(r["workload"], r["impl"]): r for r in rows}
  cmap = plt.get_cmap("tab10" if len(impls) <= 10 else "tab20")
  color = {impl: cmap(j % cmap.N) for j, impl in enumerate(impls)}
  bar, gap = 0.22, 0.45
  n_bars = sum(1 for w in wls for i in impls if (w, i) in by)
  fig, ax = plt.subplots(figsize=(11, 1.2 + bar * n_bars + gap * len(wls)))
  y, ticks, labelled = 0.0, [], set()
  for w in wls:
    here = [i for i in impls if (w, i) in by]
    ticks.append(y + bar * (len(here) - 1) / 2)
    for impl in here:
      frac = by[(w, impl)]["frac_ceiling"]
      kw = dict(edgecolor="black", linewidth=0.8) if impl.startswith("jattn") else {}
      ax.barh(y, frac, height=bar * 0.9, color=color[impl],
              label=None if impl in labelled else impl, **kw)
      ax.text(min(frac, 1.0) + 0.005, y, f"{100 * frac:.0f}%", va="center", fontsize=6)
      labelled.add(impl)
      y += bar
    y += gap
  ax.set_yticks(ticks)
  ax.set_yticklabels(wls, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0, 1.05)
  ax.set_xlabel("fraction of the roofline of the measured ceilings "
                "(compute: bf16 matmul; memory: copy)")
  m = res["runs"][-1]
  ax.set_title(f"jattn vs peers · {m['device']} · JAX {m['jax_version']} · {m['date']}",
               fontsize=10)
  ax.grid(axis="x", alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def update_readme(readme: str, res) -> bool:
  with open(readme) as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    print(f"report: {readme} has no {BEGIN} ... {END} markers; left alone", file=sys.stderr)
    return False
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  body = f"{BEGIN}\n{header(res)}\n\n{summary_table(res)}\n{END}"
  with open(readme, "w") as f:
    f.write(head + body + tail)
  return True


def write(json_path: str):
  """Write the .md and .png beside `json_path`; returns (md_path, png_path or None)."""
  res = load(json_path)
  stem = os.path.splitext(json_path)[0]
  with open(stem + ".md", "w") as f:
    f.write(markdown(res))
  return stem + ".md", plot(res, stem + ".png")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description="markdown table and plot from a results JSON")
  ap.add_argument("json")
  ap.add_argument("--readme", help="README to update between the bench markers")
  args = ap.parse_args(argv)
  md, png = write(args.json)
  print(f"wrote {md}" + (f" and {png}" if png else ""))
  if args.readme:
    update_readme(args.readme, load(args.json))
  return 0


if __name__ == "__main__":
  sys.exit(main())
