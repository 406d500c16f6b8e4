"""Which shapes hang the compiled prefill kernel when its lengths are compile-time
constants (issue 5; found as test_head_dims hanging on an H100, sessions 3-4).

  python scripts/prefill_shape_probe.py            # every case, each in its own process
  python scripts/prefill_shape_probe.py CASE       # one case (what the driver runs)

Each case compiles the raw kernel `jattn.pallas.prefill.flash_forward` with lens=None
(constant lengths; the op `attention` now passes lengths as data for one-q-tile calls,
which avoids the hang), printing when compile ends so that a hang in ptxas shows apart
from one on the device, runs it, and prints its relative error against the float64
oracle; a case that does not finish within TIMEOUT seconds is reported as hung, with
Python's stack dumped by faulthandler. Session 4 on an H100: 8 of 14 cases hung (the
rule is in benchmarks/NOTES.md); a reproducer for a Mosaic GPU report.
"""
import faulthandler
import json
import subprocess
import sys
import time

TIMEOUT = 40
BASE = dict(B=1, T=96, S=160, Nq=2, Nkv=1, D=64, Dv=64, causal=True)
CASES = {
    "A_hung_shape": {},
    "B_noncausal": dict(causal=False),
    "C_batch2": dict(B=2),
    "D_heads1": dict(Nq=1, Nkv=1),
    "E_heads4x2": dict(Nq=4, Nkv=2),
    "F_T96_S96": dict(S=96),
    "G_T128_S160": dict(T=128),
    "H_T64_S160": dict(T=64),
    "I_T96_S256": dict(S=256),
    "J_stages2": dict(stages=2),
    "K_D128": dict(D=128, Dv=128),
    "L_lens": dict(lens=True),
    "M_T32_S160": dict(T=32),
    "N_T96_S224": dict(S=224),
}


def one(name):
  faulthandler.dump_traceback_later(TIMEOUT - 5, exit=True)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jattn import reference, variants as V
  from jattn.pallas import prefill as P
  c = dict(BASE, **CASES[name])
  rng = np.random.default_rng(0)
  mk = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
  q = mk(c["B"], c["T"], c["Nq"], c["D"])
  k = mk(c["B"], c["S"], c["Nkv"], c["D"])
  v = mk(c["B"], c["S"], c["Nkv"], c["Dv"])
  var = V.causal() if c["causal"] else V.Variant(name="dense")
  lens = jnp.array([[c["T"]] * c["B"], [c["S"]] * c["B"]], jnp.int32) if c.get("lens") else None
  cfg = None
  if "stages" in c:
    cfg = P.Config(block_kv=128, num_stages=c["stages"])
  f = jax.jit(lambda q, k, v, lens: P.flash_forward(q, k, v, lens, var, sm_scale=c["D"] ** -0.5,
                                                    config=cfg))
  t0 = time.time()
  comp = f.lower(q, k, v, lens).compile()
  print(f"{name}: compiled in {time.time() - t0:.1f}s", flush=True)
  t0 = time.time()
  o, lse = jax.block_until_ready(comp(q, k, v, lens))
  ran = time.time() - t0
  ro, _ = reference.attention(*(np.asarray(x, np.float64) for x in (q, k, v)),
                              sm_scale=c["D"] ** -0.5, variant=var)
  o = np.asarray(o, np.float64)
  err = float(np.linalg.norm(o - ro) / np.linalg.norm(ro))
  print(json.dumps(dict(case=name, ok=True, run_s=round(ran, 2), rel_err=err, **c)), flush=True)


def main():
  for name in CASES:
    t0 = time.time()
    try:
      p = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True,
                         timeout=TIMEOUT)
      out = p.stdout + p.stderr
      status = "ok" if '"ok": true' in p.stdout else f"exit {p.returncode}"
    except subprocess.TimeoutExpired as e:
      out = (e.stdout or b"").decode() + (e.stderr or b"").decode() if isinstance(e.stdout, bytes) else f"{e.stdout}{e.stderr}"
      status = "TIMEOUT"
    lines = [l for l in out.splitlines() if l.strip()]
    print(f"=== {name} {dict(BASE, **CASES[name])}: {status} in {time.time() - t0:.0f}s", flush=True)
    keep = lines if status != "ok" else [l for l in lines if l.startswith(("{", name))]
    print("\n".join(keep[-40:]), flush=True)


if __name__ == "__main__":
  one(sys.argv[1]) if len(sys.argv) > 1 else main()
