"""Steady clock and power of one implementation at a time (GPU; reads nvidia-smi, changes
nothing on the card):

  PYTHONPATH=. python3 -m benchmarks.power_probe [--out DIR] [--seconds S]

For the float8 prefill's bar (issue 6): B4 T4096 H32 D128 causal in float8 (CUDA) and
bf16 (jattn's Pallas kernel, cuDNN). Each row: warm-up, 2 s idle, then `seconds` of
back-to-back calls (a wait every ~25 ms of calls), while `nvidia-smi` samples SM clock and
power every 50 ms. A row's figure is its time per call over the second half of its run,
beside the mean SM clock and power of the samples in that half: the steady,
power-limited rate, and the clock it ran at. `tflops_per_ghz` puts the rows on one clock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp

import jattn
from benchmarks.timing import log
from benchmarks.fp8_probe import prefill_inputs

F8 = jnp.float8_e4m3fn
SMI_FIELDS = "timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active"


def smi_samples(path: str) -> list[tuple[float, float, float, str]]:
  """(unix time, SM MHz, W, throttle reasons) per line of an nvidia-smi CSV log."""
  out = []
  for line in open(path):
    p = [x.strip() for x in line.split(",")]
    if len(p) < 4 or "MHz" not in p[1]:
      continue
    t = datetime.datetime.strptime(p[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
    out.append((t, float(p[1].split()[0]), float(p[2].split()[0]), p[3]))
  return out


def steady(fn, args, seconds: float) -> tuple[float, float, float]:
  """Back-to-back calls for `seconds`; (start and end of the second half, unix time; s per
  call over that half)."""
  jax.block_until_ready(fn(*args[0]))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args[0]))
  burst = max(1, int(0.025 / max(time.perf_counter() - t0, 1e-6)))
  time.sleep(2.0)
  start = time.time()
  half, calls, i = None, 0, 0
  while time.time() - start < seconds:
    for _ in range(burst):
      last = fn(*args[i % len(args)])
      i += 1
    jax.block_until_ready(last)
    if half is None and time.time() - start >= seconds / 2:
      half, calls = time.time(), 0
    elif half is not None:
      calls += burst
  end = time.time()
  return half, end, (end - half) / max(calls, 1)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=os.environ.get("OUT", "."))
  ap.add_argument("--seconds", type=float, default=4.0)
  args = ap.parse_args()
  B, T, H, D = 4, 4096, 32, 128
  flops = 2 * B * H * T * T * D     # causal: half of 4 B H T^2 D
  f32 = prefill_inputs(jax.random.key(0), B, T, H, D)
  bf = [tuple(x.astype(jnp.bfloat16) for x in s) for s in f32]
  s8 = [tuple(x.astype(F8) for x in s) for s in f32]
  del f32
  one = jnp.ones((H,), jnp.float32)
  rows = {
      "jattn_fp8_cuda": (jax.jit(lambda q, k, v: jattn.attention(
          q, k, v, causal=True, q_scale=one, k_scale=one, v_scale=one,
          implementation="cuda")), s8),
      "jattn_bf16_pallas": (jax.jit(lambda q, k, v: jattn.attention(
          q, k, v, causal=True, implementation="pallas")), bf),
      "cudnn_bf16": (jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation="cudnn")), bf),
  }
  smi_path = os.path.join(tempfile.mkdtemp(), "smi.csv")
  smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader",
                          "-lms", "50"], stdout=open(smi_path, "w"), stderr=subprocess.STDOUT)
  res = dict(device=jax.devices()[0].device_kind, rows={})
  try:
    windows = {name: steady(fn, a, args.seconds) for name, (fn, a) in rows.items()}
  finally:
    time.sleep(0.2)
    smi.terminate()
  samples = smi_samples(smi_path)
  for name, (t0, t1, s) in windows.items():
    inside = [x for x in samples if t0 <= x[0] <= t1]
    mhz = sum(x[1] for x in inside) / max(len(inside), 1)
    watts = sum(x[2] for x in inside) / max(len(inside), 1)
    res["rows"][name] = dict(ms=s * 1e3, tflops=flops / s / 1e12, sm_mhz=mhz, watts=watts,
                             samples=len(inside), tflops_per_ghz=flops / s / 1e12 / (mhz / 1e3),
                             throttle=sorted({x[3] for x in inside}))
    log(f"{name:20s} {s * 1e3:7.3f} ms {flops / s / 1e12:6.0f} TFLOP/s at {mhz:5.0f} MHz "
        f"{watts:4.0f} W ({len(inside)} samples)")
  r = res["rows"]
  for peer in ("jattn_bf16_pallas", "cudnn_bf16"):
    res[f"fp8_over_{peer}"] = r[peer]["ms"] / r["jattn_fp8_cuda"]["ms"]
    res[f"fp8_over_{peer}_same_clock"] = (r["jattn_fp8_cuda"]["tflops_per_ghz"] /
                                          r[peer]["tflops_per_ghz"])
    log(f"fp8 / {peer}: {res[f'fp8_over_{peer}']:.2f}x, at one clock "
        f"{res[f'fp8_over_{peer}_same_clock']:.2f}x")
  with open(os.path.join(args.out, "power_probe.json"), "w") as f:
    json.dump(res, f, indent=1)
  shutil.move(smi_path, os.path.join(args.out, "power_probe_smi.csv"))


if __name__ == "__main__":
  main()
