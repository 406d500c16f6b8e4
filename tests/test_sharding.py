"""Multi-device support (jattn.sharding, jattn.ring_attention, benchmarks/scaling.py).

The cases need 8 devices. XLA reads `--xla_force_host_platform_device_count` only when JAX
starts its CPU backend, which the rest of the suite has already done in this process, so
the cases live in tests/sharding_cases.py (not collected on their own) and run here in
one subprocess with 8 host CPU devices.
"""

from __future__ import annotations

import os
import subprocess
import sys

NDEV = 8


def test_multidevice_cases():
  """tests/sharding_cases.py in a subprocess with 8 host CPU devices."""
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={NDEV}").strip()
  env["JAX_PLATFORMS"] = "cpu"
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      "-rfEs", os.path.join(here, "sharding_cases.py")],
                     cwd=os.path.dirname(here), env=env, capture_output=True, text=True,
                     timeout=900)
  print(r.stdout[-8000:], r.stderr[-2000:])
  assert r.returncode == 0, f"multi-device cases failed:\n{r.stdout[-8000:]}\n{r.stderr[-2000:]}"
  assert " passed" in r.stdout and "needs 8 host devices" not in r.stdout, r.stdout[-3000:]
