"""Summarize an Nsight Compute SASS source export (`ncu -i R --page source --csv
--print-source sass`): warp-stall samples by opcode and the instructions that hold the most.

  python3 -m benchmarks.ncu_source_summary ncu_prefill_source.csv [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import csv


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("csv")
  ap.add_argument("--top", type=int, default=40)
  args = ap.parse_args()
  with open(args.csv, newline="") as f:
    rows = [r for r in csv.reader(f)]
  head = next(i for i, r in enumerate(rows) if "Source" in r)
  cols, body = rows[head], rows[head + 1:]
  src = cols.index("Source")
  addr = cols.index("Address") if "Address" in cols else None
  samp = next(i for i, c in enumerate(cols) if "Sampling (All Samples)" in c)
  print("columns:", ", ".join(c for c in cols if "Sampling" in c or "Executed" in c))

  def num(x):
    try:
      return float(x.replace(",", ""))
    except ValueError:
      return 0.0

  total = sum(num(r[samp]) for r in body if len(r) > samp)
  by_op = collections.Counter()
  for r in body:
    if len(r) > samp:
      by_op[r[src].split()[0].split(".")[0] if r[src].split() else "?"] += num(r[samp])
  print(f"total samples {total:.0f}")
  for op, n in by_op.most_common(20):
    print(f"  {op:24s} {n:9.0f}  {100 * n / max(total, 1):5.1f} %")
  print(f"top {args.top} instructions:")
  ranked = sorted((r for r in body if len(r) > samp), key=lambda r: -num(r[samp]))
  for r in ranked[:args.top]:
    print(f"  {r[addr] if addr is not None else '':>8s} {num(r[samp]):8.0f}  {r[src][:90]}")


if __name__ == "__main__":
  main()
