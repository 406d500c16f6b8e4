"""What ptxas made of jattn's Mosaic GPU kernels: the PTX, ptxas's report and the SASS
with its control codes (stalls, barriers, yields), dumped by Mosaic GPU's own switches
(`MOSAIC_GPU_DUMP_PTX`, `_PTXAS`, `_SASS_CTRL`; docs/pallas/gpu/reference.md,
"Debugging"). For questions a timing cannot answer: does a build spill, does ptxas
serialize the wgmmas (warnings C7510-C7520), where do the wgmma waits sit among the
exponentials. The PTX also assembles again off the GPU (`ptxas -arch=sm_90a -v`).

  PYTHONPATH=. python3 -m benchmarks.sass_dump OUT [NAME ...]     (on the GPU)
  python3 -m benchmarks.sass_dump --summary FILE.dump ...         (anywhere)

Each NAME (default: every one of BUILDS) compiles and runs once one harness workload's
jattn row in a fresh process (nothing cached, so every kernel is compiled; the boolean
module switches named in `JATTN_SASS_FLAGS` set True, for a switch added for an A/B as in
`flag_probe.py`), its stdout in OUT/NAME.dump; the summary then prints, per kernel in a
dump: registers, spill bytes, ptxas's warnings, and counts of the instructions that
matter here. The device has no `nvdisasm` on Mosaic GPU's path, so the SASS comes from
the dumped PTX assembled again off the GPU with the same ptxas (`ptxas -arch=sm_90a -O3`,
`nvdisasm -c -hex`; session 21 read it that way).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys

# name -> (harness workload, jattn row, prefill Config fields forced on the dense op)
CAUSAL = "jattn.attention[pallas]"
BUILDS = {
    "causal_d128": ("prefill_causal_b4_t4096_h32_d128", CAUSAL, {}),
    "causal_d128_early": ("prefill_causal_b4_t4096_h32_d128", CAUSAL, dict(early_qk=True)),
    "causal_d64": ("prefill_causal_b4_t4096_h32_d64", CAUSAL, {}),
    "causal_d64_early": ("prefill_causal_b4_t4096_h32_d64", CAUSAL, dict(early_qk=True)),
    "causal_d256": ("prefill_causal_b4_t4096_h16_d256", CAUSAL, {}),
    "causal_d256_plain": ("prefill_causal_b4_t4096_h16_d256", CAUSAL, dict(early_qk=False)),
    "sparse_0.1": ("block_sparse_t8192_h32_d128_b64_density0.1",
                   "jattn.block_sparse_attention[pallas,plan]", {}),
    "decode_b32": ("decode_gqa32x8_b32_s4096_d128_p16", "jattn.decode[pallas]", {}),
}

DUMP_ENV = dict(MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_PTXAS="1", MOSAIC_GPU_DUMP_SASS_CTRL="1")

# SASS opcodes (the mnemonic's first word) worth counting in an attention kernel.
OPCODES = ("HGMMA", "WARPGROUP.DEPBAR", "WARPGROUP.ARRIVE", "MUFU.EX2", "FFMA", "FMUL",
           "FMNMX", "SHFL.BFLY", "F2FP", "BAR", "SYNCS", "LDL", "STL", "LDS", "STS", "LDG",
           "UTMALDG", "UTMASTG", "BRA")


def compile_one(name: str) -> None:
  """Build NAME's row and run it once (this process: the dump goes to its stdout)."""
  import jax
  from benchmarks import impls, run, workloads as W  # noqa: F401
  from jattn.pallas import prefill as P
  wl_name, label, forced = BUILDS[name]
  for path in filter(None, os.environ.get("JATTN_SASS_FLAGS", "").split(",")):
    mod, attr = path.rsplit(".", 1)
    setattr(importlib.import_module(mod), attr, True)
  if forced:
    plain = P.flash_forward

    def with_fields(q, k, v, lens, variant, *, sm_scale, config=None, interpret=False):
      cfg = config or P.default_config(q.shape[-1], v.shape[-1], interpret)
      return plain(q, k, v, lens, variant, sm_scale=sm_scale, interpret=interpret,
                   config=dataclasses.replace(cfg, **forced))
    P.flash_forward = with_fields
  (wl,) = [w for w in W.STANDARD if w.name == wl_name]
  (build,) = [b for lab, _, b in impls.entries(wl) if lab == label]
  prep = build(wl, impls.Data(wl))
  jax.block_until_ready(prep.fn(*prep.args[0]))
  sys.stdout.flush()


def dump(out: str, names) -> None:
  for name in names or BUILDS:
    path = os.path.join(out, f"{name}.dump")
    with open(path, "w") as f:
      rc = subprocess.run([sys.executable, "-m", "benchmarks.sass_dump", "--one", name],
                          stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **DUMP_ENV},
                          timeout=300).returncode
    print(f"== {name}: rc {rc}, {os.path.getsize(path) / 1e6:.1f} MB")
    summary(path)


def kernels(text: str):
  """(ptxas report lines, SASS lines) per kernel function in a dump."""
  funcs = re.split(r"\n\s*Function : ", text)
  reports = re.findall(r"ptxas info\s*: Used \d+ registers.*|ptxas (?:info|warning)\s*:.*",
                       text)
  return reports, [f.splitlines() for f in funcs[1:]]


def summary(path: str) -> None:
  with open(path, errors="replace") as f:
    text = f.read()
  reports, funcs = kernels(text)
  for line in reports:
    if "Compiling entry" in line or "Function properties" in line:
      continue
    print("  ", line.strip()[:200])
  for lines in funcs:
    ops = {}
    for line in lines:
      m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
      if m:
        op = m.group(1)
        key = next((o for o in OPCODES if op == o or op.startswith(o + ".")), None)
        if key:
          ops[key] = ops.get(key, 0) + 1
    print(f"   {lines[0].strip()[:60]}: {len(lines)} lines;",
          ", ".join(f"{k} {v}" for k, v in ops.items()))


if __name__ == "__main__":
  if sys.argv[1] == "--one":
    compile_one(sys.argv[2])
  elif sys.argv[1] == "--summary":
    for p in sys.argv[2:]:
      print("==", p)
      summary(p)
  else:
    dump(sys.argv[1], sys.argv[2:])
