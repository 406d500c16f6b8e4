"""jattn.bench: a wrong solution is rejected and never dispatched, a faster correct one is
applied inside `jattn.apply` and only there, traces round-trip through JSON lines, the
tuned table is looked up by shape bucket with a heuristic fallback, and the `tune` CLI
runs its whole loop on CPU (tiny shapes, XLA and the interpreted Pallas kernels)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import pytest

import jattn
from jattn import bench, dispatch, tuned, xla
from jattn.bench import Trace, Workload
from jattn.bench import tune as bench_tune
from jattn.bench.__main__ import main as bench_main
from jattn.pallas import prefill as pallas_prefill

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))     # the tune CLI reads the harness's workloads

TINY = Workload("attention", batch=1, num_q_heads=4, num_kv_heads=2, head_dim=32, q_len=64,
                kv_len=64, name="tiny_causal")
DEVICE = tuned.device_kind()
ON_GPU = jax.default_backend() == "gpu"


def _xla_attention(q, k, v, **kw):
  return xla.attention(q, k, v, **kw)


def _scaled(scale):
  """The XLA reference with the softmax scale off by `scale` (wrong unless scale == 1)."""
  def fn(q, k, v, *, sm_scale, **kw):
    return xla.attention(q, k, v, sm_scale=sm_scale * scale, **kw)
  return fn


def _inputs(wl, seed=0):
  a = bench.definition("attention").make(wl, seed)
  return a["q"], a["k"], a["v"]


def _usual(wl) -> str:
  """What the dispatcher picks for `wl` with no override (xla on CPU, pallas on a GPU)."""
  return dispatch.select(bench.definition(wl.definition).spec(wl), None).impl.name


def _trace(solution, bucket, ms, status="passed", device=DEVICE, definition="attention",
           config=None):
  return Trace(definition=definition, workload=TINY.to_json(), solution=solution,
               status=status, bucket=bucket, median_ms=ms, device=device, config=config)


# ----------------------------------------------------------------------------- dispatcher

def test_override_stack_innermost_first_and_explicit_wins():
  spec = bench.definition("attention").spec(TINY)
  a = bench.Solution("sol_a", "attention", _xla_attention)
  b = bench.Solution("sol_b", "attention", _xla_attention)
  refuses = bench.Solution("sol_refuses", "attention", _xla_attention,
                           check=lambda spec: "never serves")
  q, k, v = _inputs(TINY)
  call = lambda **kw: jax.eval_shape(functools.partial(jattn.attention, causal=True, **kw),
                                     q, k, v)
  with dispatch.override(lambda s: a.impl):
    with dispatch.override(lambda s: b.impl):
      call()
      assert dispatch.chosen("attention") == "sol_b"
      call(implementation="xla")                 # a named implementation ignores overrides
      assert dispatch.chosen("attention") == "xla"
    call()
    assert dispatch.chosen("attention") == "sol_a"
    with dispatch.override(lambda s: refuses.impl):
      call()                                     # passed over with its reason
      assert dispatch.chosen("attention") == "sol_a"
  call()
  assert dispatch.chosen("attention") == _usual(TINY)
  assert tuned.spec_bucket(spec).startswith("attention|bfloat16|bfloat16|d32|dv32|h4|kvh2|b1|t64")


# ----------------------------------------------------------------------------- evaluation

def test_wrong_solution_rejected_and_never_dispatched():
  xla = bench.registered("attention")["xla"]
  wrong = bench.Solution("xla_2x_scale", "attention", _scaled(2.0))
  good = bench.Solution("xla_same", "attention", _scaled(1.0))
  traces = bench.evaluate("attention", [TINY], [xla, wrong, good],
                          timing_kw=dict(reps=2, max_calls=2, budget_s=0.05))
  by = {t.solution: t for t in traces}
  assert by["xla_2x_scale"].status == "incorrect" and by["xla_2x_scale"].median_ms is None
  assert by["xla_2x_scale"].max_error > 10 * by["xla_2x_scale"].tolerance
  assert "tolerance" in by["xla_2x_scale"].reason
  for name in ("xla", "xla_same"):
    assert by[name].status == "passed" and by[name].max_error < 2e-2 and by[name].median_ms > 0
  assert len({t.seed for t in traces}) == 3          # fresh inputs for every solution

  # Even a (forged) trace saying the wrong one is by far the fastest cannot get it chosen:
  # one incorrect trace bars it from the op.
  bucket = by["xla"].bucket
  forged = traces + [_trace("xla_2x_scale", bucket, 1e-6)]
  with jattn.apply(forged, solutions=[wrong, good]) as applied:
    assert all(s.name != "xla_2x_scale" for s in applied.choices.values())
    q, k, v = _inputs(TINY, seed=5)
    jattn.attention(q, k, v, causal=True)
    assert dispatch.chosen("attention") in ("xla", "xla_same")


def test_readme_example_faster_correct_solution_applied_inside_only():
  text = (ROOT / "jattn" / "bench" / "README.md").read_text()
  env: dict = {}
  exec(compile("\n".join(re.findall(r"```python\n(.*?)```", text, re.S)), "README", "exec"), env)
  by = {t.solution: t for t in env["traces"]}
  assert by["banded_window_2x_scale"].status == "incorrect"
  assert by["banded_window"].status == "passed" and by["xla"].status == "passed"
  fastest = min(("banded_window", "xla"), key=lambda n: by[n].median_ms)
  assert env["inside"] == fastest and env["outside"] == _usual(env["wl"])
  if not ON_GPU:      # on the CPU the band's 2w logits per row beat the reference's S
    assert fastest == "banded_window" and env["outside"] == "xla"
  err = jnp.abs(env["out"].astype(jnp.float32) - env["out_default"].astype(jnp.float32)).max()
  assert float(err) < 3e-2


def test_selection_from_injected_traces():
  """Selection logic apart from timing: per (op, bucket) the lowest mean median among
  this device's passing traces; other devices, other buckets and failures do not count."""
  spec = bench.definition("attention").spec(TINY)
  here = tuned.spec_bucket(spec)
  other = here.replace("|t64|", "|t128|")
  fast = bench.Solution("fast", "attention", _xla_attention)
  slow = bench.Solution("slow", "attention", _xla_attention)
  traces = [_trace("fast", here, 1.0), _trace("fast", here, 3.0),   # mean 2.0
            _trace("slow", here, 2.5),
            _trace("slow", other, 0.5), _trace("fast", other, 0.9),
            _trace("slow", here, 0.1, device="another-gpu"),         # another device
            _trace("fast", here, None, status="error"),
            _trace("ghost", other, 0.01, definition="decode")]        # unknown name
  best = bench.best_solutions(traces)
  assert best[("attention", here)][0] == "fast" and best[("attention", other)][0] == "slow"
  assert bench.best_solutions(traces, device="any")[("attention", here)][0] == "slow"
  applied = jattn.apply(traces, solutions=[fast, slow])
  assert applied.unresolved == ["decode: ghost"]
  q, k, v = _inputs(TINY, seed=3)
  with applied:
    jattn.attention(q, k, v, causal=True)
    assert dispatch.chosen("attention") == "fast"
    jattn.attention(q, k, v, causal=False)        # another bucket (mask): usual priorities
    assert dispatch.chosen("attention") == _usual(dataclasses.replace(TINY, causal=False))
  jattn.attention(q, k, v, causal=True)
  assert dispatch.chosen("attention") == _usual(TINY)


def test_traces_and_workloads_round_trip_json(tmp_path):
  wl = Workload("prefill", batch=2, num_q_heads=4, num_kv_heads=2, head_dim=32, q_len=16,
                kv_len=64, q_lens=(16, 5), kv_lens=(64, 40), page_size=8, window=8,
                name="packed")
  assert Workload.from_json(json.loads(json.dumps(wl.to_json()))) == wl
  (path := tmp_path / "w.json").write_text(json.dumps([wl.to_json(), TINY.to_json()]))
  assert bench.load_workloads(str(path)) == [wl, TINY]
  traces = bench.evaluate("prefill", [wl], [bench.registered("prefill")["xla"]],
                          timing_kw=dict(reps=1, max_calls=1, budget_s=0.0))
  traces.append(_trace("x", "b", 1.5, config={"block_kv": 64}))
  out = tmp_path / "t.jsonl"
  bench.save_traces(str(out), traces[:1], mode="w")
  bench.save_traces(str(out), traces[1:])
  back = bench.load_traces(str(out))
  assert back == traces and len(out.read_text().splitlines()) == len(traces)
  t = back[0]
  assert t.status == "passed" and t.device == DEVICE and t.versions["jax"] == jax.__version__
  assert Workload.from_json(t.workload) == wl and t.bucket.startswith("prefill|")


# ----------------------------------------------------------------------------- tuned table

def _table(entries, device=DEVICE, heuristic=None):
  extra = {} if heuristic is None else {"heuristic_config": heuristic}
  return {"format": tuned.FORMAT, "device": device, "entries": {
      k: {"kernel": "pallas_mosaic", "config": c, **extra} for k, c in entries.items()}}


def test_tuned_lookup_by_bucket_and_fallback(monkeypatch):
  B, T, Nq, Nkv, D = 2, 100, 4, 2, 64
  q = jax.ShapeDtypeStruct((B, T, Nq, D), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((B, T, Nkv, D), jnp.bfloat16)
  var = jattn.variants.causal()
  pick = lambda t, variant=var: pallas_prefill.pick_config(
      "attention", q, k, k, batch=B, q_len=t, kv_len=t, variant=variant, interpret=False)
  key = tuned.bucket("attention", dtype=jnp.bfloat16, head_dim=D, v_head_dim=D,
                     num_q_heads=Nq, num_kv_heads=Nkv, batch=B, q_len=T, kv_len=T, variant=var)
  assert key == tuned.bucket("attention", dtype=jnp.bfloat16, kv_dtype=jnp.bfloat16, head_dim=D,
                             v_head_dim=D, num_q_heads=Nq, num_kv_heads=Nkv, batch=2,
                             q_len=128, kv_len=128, variant=var)        # 100 -> 128 bucket
  chosen = dict(block_kv=64, num_stages=4, persistent=True)
  default = pallas_prefill.default_config(D, D, kv_len=T, band=var.band)   # (128 keys: short)
  assert default == pallas_prefill.default_config(D, D, kv_len=128, band=var.band)
  with tuned.use(None):
    assert tuned.current_table() is None and pick(T) == default       # no table: heuristic
  if not ON_GPU:
    assert tuned.current_table() is None      # tables ship for GPUs only
  tuned_cfg = dataclasses.replace(default, **chosen)   # fields not tuned: the default's
  with tuned.use(_table({key: chosen})):
    assert pick(T) == tuned_cfg == pick(128)
    assert pick(129) == default                                          # other length bucket
    assert pick(T, jattn.variants.sliding_window(8)) == default          # other mask kind
    assert tuned.history[-1] == (key.replace("causal", "window"), None)
  with tuned.use(_table({key: chosen}, device="another-gpu")):
    assert pick(T) == default                                            # tables are per device
  monkeypatch.setenv("JATTN_TUNED", "off")
  with tuned.use(_table({key: chosen})):
    assert pick(T) == tuned_cfg                                          # use() beats the env
  assert pick(T) == default and tuned.current_table() is None
  # A tuned paged-prefill tile that cannot read the cache's pages is not used.
  pages = jax.ShapeDtypeStruct((10, 48, Nkv, D), jnp.bfloat16)
  pkey = tuned.bucket("prefill", dtype=jnp.bfloat16, head_dim=D, v_head_dim=D, num_q_heads=Nq,
                      num_kv_heads=Nkv, batch=B, q_len=T, kv_len=96, page_size=48, variant=var)
  with tuned.use(_table({pkey: dict(block_kv=128, num_stages=2, persistent=False)})):
    cfg = pallas_prefill.pick_config("prefill", jax.ShapeDtypeStruct((T, Nq, D), jnp.bfloat16),
                                     pages, pages, batch=B, q_len=T, kv_len=96, variant=var,
                                     interpret=False, page_size=48)
    assert cfg == pallas_prefill.default_config(D, D, op="prefill")
    assert tuned.history[-1][0] == pkey
  # An entry tuned against another heuristic is stale: the kernel keeps today's heuristic.
  now = {k: getattr(default, k) for k in chosen}
  with tuned.use(_table({key: chosen}, heuristic=now)):
    assert pick(T) == tuned_cfg
  with tuned.use(_table({key: chosen}, heuristic={**now, "persistent": not default.persistent})):
    assert pick(T) == default and tuned.history[-1] == (key, None)


def test_tune_cli_tiny_interpret_and_dispatch_reads_the_table(tmp_path):
  out = tmp_path / "cpu.json"
  names = "prefill_causal_gqa32x8_b4_t4096_d128,decode_gqa32x8_b32_s4096_d128_p16"
  assert bench_main(["tune", "--tiny", "--interpret", "--peers", "--workloads", names,
                     "--out", str(out)]) == 0
  table = json.loads(out.read_text())
  traces = bench.load_traces(str(tmp_path / "cpu.traces.jsonl"))
  assert table["device"] == DEVICE and table["traces"] == "cpu.traces.jsonl"
  assert {t.status for t in traces} <= {"passed", "unsupported"}
  assert {t.solution for t in traces if t.status == "passed"} >= {
      "xla", "pallas_mosaic[block_kv=64,num_stages=2,persistent=False]", "pallas_mosaic[stages=2]"}
  assert all(t.interpret != ON_GPU for t in traces if t.solution.startswith("pallas"))
  wls = bench_tune.harness_workloads("all", names.split(","), tiny=True)
  heuristic = {bench.SPACES[w.definition].solution(bench.SPACES[w.definition].heuristic(
      bench.definition(w.definition).spec(w), not ON_GPU)).name for w in wls}
  assert all(t.heuristic == (t.solution in heuristic) for t in traces)
  entries = table["entries"]
  assert {e["definition"] for e in entries.values()} == {"attention", "decode"}
  for key, e in entries.items():
    timed = {json.dumps(t.config, sort_keys=True): t.median_ms for t in traces
             if t.bucket == key and t.config is not None}
    assert e["median_ms"] == pytest.approx(min(timed.values()), rel=1e-4)
    assert timed[json.dumps(e["config"], sort_keys=True)] == pytest.approx(e["median_ms"], rel=1e-4)
    assert e["heuristic_ms"] is not None

  # A second run resumes (nothing left to time); a table may not go into the package off-GPU.
  assert bench_main(["tune", "--tiny", "--interpret", "--workloads", names,
                     "--out", str(out)]) == 0
  assert len(bench.load_traces(str(tmp_path / "cpu.traces.jsonl"))) == len(traces)
  assert bench_main(["tune", "--tiny", "--interpret", "--out",
                     os.path.join(tuned.DIR, "cpu.json")]) == 2
  assert not os.path.exists(os.path.join(tuned.DIR, "cpu.json"))

  # The kernels read the table when traced (the Pallas kernels, interpreted on CPU).
  for wl in wls:
    defn = bench.definition(wl.definition)
    key = tuned.spec_bucket(defn.spec(wl))
    trace = lambda: jax.eval_shape(lambda a: defn.call(wl, a, implementation="pallas"),
                                   defn.make(wl, 11))
    with tuned.use(str(out)):
      trace()
    assert tuned.history[-1] == (key, entries[key]["config"])
    with tuned.use(None):
      trace()
    assert tuned.history[-1] == (key, None)


@pytest.mark.parametrize("path", sorted(pathlib.Path(tuned.DIR).glob("*.json")),
                         ids=lambda p: p.stem)
def test_shipped_tables_come_from_their_traces_and_reach_the_kernels(path, monkeypatch):
  """Every packaged table: each entry is the fastest passed trace of its bucket in the
  traces file beside it, and on its GPU the prefill kernel's config pick returns it
  (unless it is stale)."""
  table = tuned.load(str(path))
  traces = bench.load_traces(str(path.parent / table["traces"]))
  assert table["entries"] and all(t.device == table["device"] for t in traces)
  monkeypatch.setattr(tuned, "device_kind", lambda: table["device"])
  for key, entry in table["entries"].items():
    passed = [t for t in traces if t.bucket == key and t.status == "passed"]
    best = min(passed, key=lambda t: t.median_ms)
    assert entry["config"] == best.config and entry["median_ms"] == pytest.approx(best.median_ms, rel=1e-4)
    assert tuned.lookup(key) == entry["config"]
    if entry["definition"] != "attention":
      continue
    w = best.workload
    q = jax.ShapeDtypeStruct((w["batch"], w["q_len"], w["num_q_heads"], w["head_dim"]),
                             jnp.dtype(w["dtype"]))
    k = jax.ShapeDtypeStruct((w["batch"], w["kv_len"], w["num_kv_heads"], w["head_dim"]),
                             jnp.dtype(w["dtype"]))
    var = jattn.variants.causal() if w["causal"] else jattn.Variant()
    cfg = pallas_prefill.pick_config("attention", q, k, k, batch=w["batch"], q_len=w["q_len"],
                                     kv_len=w["kv_len"], variant=var, interpret=False)
    default = pallas_prefill.default_config(w["head_dim"], w["head_dim"])
    stale = any(getattr(default, f) != v for f, v in entry["heuristic_config"].items())
    # (a stale entry was tuned against an older heuristic: the kernel keeps today's)
    assert cfg == (default if stale else dataclasses.replace(default, **entry["config"]))
