"""What ptxas made of jattn's Mosaic GPU kernels: the PTX and ptxas's report, dumped by
Mosaic GPU's own switches (`MOSAIC_GPU_DUMP_PTX`, `_PTXAS`; docs/pallas/gpu/reference.md,
"Debugging"), and the SASS read from them off the GPU. For questions a timing cannot
answer: does a build spill, does ptxas serialize the wgmmas (C7510-C7520), where do the
waits sit among the exponentials.

  PYTHONPATH=. python3 -m benchmarks.sass_dump OUT [NAME ...]     (on the GPU)
  python3 -m benchmarks.sass_dump --summary FILE.dump ...         (ptxas's report)
  python3 -m benchmarks.sass_dump --ptx FILE.dump > k.ptx         (anywhere, then:)
  ptxas -arch=sm_90a -O3 -o k.cubin k.ptx && nvdisasm -c -hex k.cubin > k.sass
  python3 -m benchmarks.sass_dump --loops k.sass                  (per-loop opcode counts)

Each NAME (default: every one of BUILDS) compiles and runs once one harness workload's
jattn row in a fresh process (nothing cached, so every kernel is compiled; the boolean
module switches named in `JATTN_SASS_FLAGS` set True, for a switch added for an A/B as in
`flag_probe.py`), its stdout in OUT/NAME.dump. The device has no `nvdisasm` on Mosaic
GPU's path (its SASS switch fails there), so the SASS comes from the dumped PTX
assembled again with the same ptxas, CUDA 13.0, which gives the device's report
(`nvdisasm` from the nvidia-cuda-nvdisasm wheel; session 21 read it that way).
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

DUMP_ENV = dict(MOSAIC_GPU_DUMP_PTX="1", MOSAIC_GPU_DUMP_PTXAS="1")


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


def summary(path: str) -> None:
  """ptxas's report lines of a dump: registers, spills, wgmma warnings."""
  with open(path, errors="replace") as f:
    for line in f:
      if re.match(r"ptxas (info|warning)", line) and "Compiling entry" not in line \
          and "Function properties" not in line:
        print("  ", line.strip()[:200])


def ptx(path: str) -> str:
  """The PTX of a dump (the text before ptxas's report), to assemble again off the GPU."""
  with open(path, errors="replace") as f:
    return re.split(r"^ptxas ", f.read(), maxsplit=1, flags=re.M)[0]


# SASS opcodes (the mnemonic up to its first dot, or all of it) counted per loop.
OPCODES = ("HGMMA", "WARPGROUP.DEPBAR", "WARPGROUP.ARRIVE", "MUFU.EX2", "FFMA", "FMUL",
           "FMNMX", "SHFL", "F2FP", "FADD", "FSEL", "BAR", "SYNCS", "VOTE", "LDL", "STL",
           "LDS", "STS", "LDG")


def loops(path: str) -> None:
  """Per backward branch of `nvdisasm -c` output (a loop body, or a wait's retry): its
  address range, instruction count and the counts of OPCODES."""
  ins, labels, pending = [], {}, []
  with open(path) as f:
    for line in f:
      if m := re.match(r"\s*(\.L_x_\d+):", line):
        pending.append(m.group(1))
      elif m := re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line):
        addr = int(m.group(1), 16)
        labels.update((p, addr) for p in pending)
        pending = []
        ins.append((addr, re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())))
  for addr, text in ins:
    target = re.search(r"\bBRA\b.*\((\.L_x_\d+)\)", text)
    if target and labels[target.group(1)] < addr:
      body = [t.split()[0] for a, t in ins if labels[target.group(1)] <= a <= addr]
      counts = {k: sum(op == k or op.startswith(k + ".") for op in body) for k in OPCODES}
      print(f"{labels[target.group(1)]:#07x}-{addr:#07x}: {len(body)} instructions;",
            ", ".join(f"{k} {v}" for k, v in counts.items() if v))


if __name__ == "__main__":
  if sys.argv[1] == "--one":
    compile_one(sys.argv[2])
  elif sys.argv[1] == "--summary":
    for p in sys.argv[2:]:
      print("==", p)
      summary(p)
  elif sys.argv[1] == "--ptx":
    sys.stdout.write(ptx(sys.argv[2]))
  elif sys.argv[1] == "--loops":
    loops(sys.argv[2])
  else:
    dump(sys.argv[1], sys.argv[2:])
