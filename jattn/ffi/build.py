"""Just-in-time build of jattn's CUDA kernels with nvcc, cached on disk.

A kernel is compiled for one exact instantiation (template parameters such as head_dim
and causal, plus the GPU arch) the first time it is used, into a shared object holding
one XLA FFI handler. The cache directory is `$JATTN_CACHE_DIR`, else
`~/.cache/jattn`; the file name carries a key hashed from the CUDA sources (every file
in csrc/), the parameters, the arch and `nvcc --version`, so editing a source or
changing the compiler rebuilds. Concurrent processes are safe: the build runs under an
exclusive file lock and the result appears by atomic rename.

Prebuild (for instance in a container image):

    python -m jattn.ffi.build --arch sm_90a,sm_100a
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fcntl
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import threading
import time
from typing import Optional

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
ARCHS = ("sm_90a", "sm_100a")
DEFAULT_NVCC = "/usr/local/cuda/bin/nvcc"
HEAD_DIMS = (64, 128, 256)

# This process's nvcc runs (tests read it). "perf_warnings": ptxas's "Potential Performance
# Loss" lines (C7513: every wgmma serialized) per library built.
stats = {"compiles": 0, "seconds": 0.0, "perf_warnings": {}}
_stats_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One FFI library: its source, the symbol of its handler and its macro parameters."""

  name: str       # "prefill" | "decode"
  source: str     # file in csrc/
  symbol: str     # exported handler
  params: tuple   # ((macro suffix, value), ...), sorted by name

  def tag(self) -> str:
    return "_".join(f"{k.lower()}{v}" for k, v in self.params)


def prefill_kernel(head_dim: int, causal: bool, arch: str, wgmma: Optional[bool] = None) -> Kernel:
  """FP8 prefill. `wgmma` defaults to True on sm_90a (the only arch that has it)."""
  if wgmma is None:
    wgmma = arch == "sm_90a"
  if wgmma and arch != "sm_90a":
    raise ValueError(f"jattn.ffi: wgmma exists only on sm_90a, not {arch}")
  return Kernel("prefill", "ffi_prefill.cu", "JattnFp8Prefill",
                (("CAUSAL", int(causal)), ("HEAD_DIM", head_dim), ("WGMMA", int(wgmma))))


def decode_kernel(head_dim: int, group: int) -> Kernel:
  """FP8-KV paged decode for query groups of up to 8 (one head tile) or 16 heads."""
  return Kernel("decode", "ffi_decode.cu", "JattnFp8Decode",
                (("HEAD_DIM", head_dim), ("HEAD_TILES", 1 if group <= 8 else 2)))


def default_kernels(arch: str) -> list[Kernel]:
  """Every instantiation `python -m jattn.ffi.build` prebuilds for `arch`."""
  ks = [prefill_kernel(d, c, arch) for d in HEAD_DIMS for c in (False, True)]
  ks += [decode_kernel(d, g) for d in HEAD_DIMS for g in (8, 16) if d * (1 if g <= 8 else 2) <= 256]
  return ks


# ----------------------------------------------------------------------------- toolchain

def nvcc_path() -> str:
  """nvcc from $JATTN_NVCC, $CUDA_HOME/bin, PATH or DEFAULT_NVCC."""
  cands = [os.environ.get("JATTN_NVCC")]
  if os.environ.get("CUDA_HOME"):
    cands.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
  cands += [shutil.which("nvcc"), DEFAULT_NVCC]
  for c in cands:
    if c and os.path.isfile(c) and os.access(c, os.X_OK):
      return c
  raise RuntimeError(
      "jattn.ffi: nvcc not found (looked at $JATTN_NVCC, $CUDA_HOME/bin, PATH and "
      "/usr/local/cuda/bin). The CUDA FP8 kernels are compiled on first use: install the "
      "CUDA toolkit (12.8 or newer) or set JATTN_NVCC; implementation='xla' needs no nvcc.")


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc: str) -> str:
  return subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                        check=True).stdout.strip()


@functools.lru_cache(maxsize=None)
def source_hash() -> str:
  h = hashlib.sha256()
  for p in sorted(CSRC.glob("*")):
    if p.suffix in (".cu", ".cuh", ".h"):
      h.update(p.name.encode())
      h.update(p.read_bytes())
  return h.hexdigest()


def cache_dir() -> pathlib.Path:
  d = os.environ.get("JATTN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                        "jattn")
  path = pathlib.Path(d)
  path.mkdir(parents=True, exist_ok=True)
  return path


def ffi_include_dir() -> str:
  import jax  # noqa: PLC0415  (only needed when compiling)
  return jax.ffi.include_dir()


def library_path(kernel: Kernel, arch: str, nvcc: Optional[str] = None) -> pathlib.Path:
  nvcc = nvcc or nvcc_path()
  key = hashlib.sha256("\n".join([source_hash(), kernel.name, repr(kernel.params), arch,
                                  nvcc_version(nvcc)]).encode()).hexdigest()[:16]
  return cache_dir() / f"jattn_{kernel.name}_{kernel.tag()}_{arch}_{key}.so"


def nvcc_command(kernel: Kernel, arch: str, out: str, nvcc: str) -> list[str]:
  num = arch[3:]  # "90a"
  return [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
          "-Xcompiler", "-Wno-return-type", "-diag-suppress", "940,2473",
          f"-gencode=arch=compute_{num},code=sm_{num}", f"-I{CSRC}",
          f"-I{ffi_include_dir()}", "-lineinfo"]  \
      + [f"-DJATTN_{k}={v}" for k, v in kernel.params] \
      + [str(CSRC / kernel.source), "-o", out]


def build(kernel: Kernel, arch: str) -> pathlib.Path:
  """Path of the compiled library for (kernel, arch), compiling it if no process has."""
  if arch not in ARCHS:
    raise ValueError(f"jattn.ffi: arch must be one of {ARCHS}, got {arch!r}")
  nvcc = nvcc_path()
  lib = library_path(kernel, arch, nvcc)
  if lib.exists():
    return lib
  with open(lib.with_suffix(".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
    if lib.exists():
      return lib
    tmp = lib.with_name(f"{lib.name}.tmp{os.getpid()}")
    cmd = nvcc_command(kernel, arch, str(tmp), nvcc)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
      tmp.unlink(missing_ok=True)
      raise RuntimeError(f"jattn.ffi: nvcc failed for {kernel.name} {kernel.tag()} {arch}:\n"
                         f"{' '.join(cmd)}\n{r.stderr[-4000:]}")
    os.replace(tmp, lib)  # atomic: readers see no file or the whole file
    warnings = [line for line in r.stderr.splitlines() if "Performance Loss" in line]
    with _stats_lock:
      stats["compiles"] += 1
      stats["seconds"] += time.perf_counter() - t0
      if warnings:
        stats["perf_warnings"][lib.name] = warnings
  return lib


def build_many(pairs, jobs: Optional[int] = None) -> list[pathlib.Path]:
  """Build (kernel, arch) pairs in parallel (nvcc is single-threaded)."""
  jobs = jobs or max(1, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
    return list(ex.map(lambda ka: build(*ka), pairs))


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m jattn.ffi.build", description=__doc__.split("\n")[0])
  ap.add_argument("--arch", default="sm_90a", help=f"comma-separated, from {ARCHS}")
  ap.add_argument("--jobs", type=int, default=None)
  args = ap.parse_args(argv)
  archs = [a.strip() for a in args.arch.split(",") if a.strip()]
  pairs = [(k, a) for a in archs for k in default_kernels(a)]
  t0 = time.perf_counter()
  libs = build_many(pairs, args.jobs)
  for (k, a), lib in zip(pairs, libs):
    print(f"{a:8s} {k.name:8s} {k.tag():32s} {lib}")
  print(f"{len(libs)} libraries, {stats['compiles']} compiled in "
        f"{time.perf_counter() - t0:.1f} s, cache {cache_dir()}")


if __name__ == "__main__":
  main()
