"""The benchmark harness end to end on tiny shapes (`--tiny`) with jattn's XLA path, plus
peers that are absent here (their rows must say why): JSON, markdown and plot appear
with sane fields. The real runs are on the GPU (scripts/gpu_check.sh --bench)."""

from __future__ import annotations

import glob
import json
import math
import os
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import report, run, workloads  # noqa: E402

# One of each kind but plain prefill (append covers the dense and paged forward paths),
# and a float8 decode with its bf16 twin.
WORKLOADS = ("decode_skewed_lengths", "append_b8_q256_kv4096_gqa32x8",
             "attention_bwd_causal_b4_t4096_h32_d128", "mla_decode_b128_s8192_h16_p64",
             "block_sparse_t8192_h32_d128_b64_density0.3", "decode_gqa32x8_b32_s4096_d128_p16",
             "decode_gqa32x8_b32_s4096_d128_p16_fp8")
IMPLS = "jattn.*[[]xla],tokamax.mosaic,jax.nn.*,jattn.attention[[]pallas] dense"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  rc = run.main(["--suite", "all", "--tiny", "--out", str(out),
                 "--workloads", ",".join(WORKLOADS), "--impls", IMPLS])
  assert rc == 0
  (path,) = glob.glob(str(out / "*-tiny.json"))
  with open(path) as f:
    return path, json.load(f)


def test_standard_workload_names():
  names = [w.name for w in workloads.STANDARD]
  for name in ("prefill_causal_b4_t4096_h32_d128", "prefill_causal_b1_t8192_h32_d128",
               "prefill_causal_gqa32x8_b4_t4096_d128", "prefill_causal_b4_t4096_h16_d256",
               "prefill_causal_b4_t4096_h32_d64", "decode_gqa32x8_b32_s4096_d128_p16",
               "decode_gqa32x8_b128_s2048_d128_p16", "decode_mha32_b32_s4096_d128_p16",
               "decode_skewed_lengths", "append_b8_q256_kv4096_gqa32x8",
               "attention_bwd_causal_b4_t4096_h32_d128", "prefill_window1024_b1_t8192_h32_d128",
               "prefill_noncausal_b4_t4096_h32_d128"):
    assert name in names
  lens = next(w for w in workloads.STANDARD if w.name == "decode_skewed_lengths").kv_lens()
  assert len(lens) == 64 and lens.max() == 32768 and 1500 < lens.mean() < 2600


def test_flop_counts():
  wl = workloads.STANDARD[0]  # causal B4 T4096 H32 D128: 4*B*N*T*T*D / 2 (+ the diagonal)
  b, t, n, d = 4, 4096, 32, 128
  assert wl.flops() == pytest.approx(4 * b * n * t * t * d / 2, rel=1e-3)
  noncausal = next(w for w in workloads.STANDARD if not w.causal)
  assert noncausal.flops() == pytest.approx(4 * b * n * t * t * d)
  mla = next(w for w in workloads.STANDARD if w.name == "mla_decode_b64_s4096_h128_p64")
  assert mla.flops() == pytest.approx(2 * 64 * 128 * 4096 * (576 + 512))
  assert mla.bytes() == pytest.approx(2 * (64 * 4096 * 576 + 64 * 128 * (576 + 512)))
  by = {w.name: w for w in workloads.STANDARD}
  f8, bf = by["decode_gqa32x8_b32_s4096_d128_p16_fp8"], by["decode_gqa32x8_b32_s4096_d128_p16"]
  assert f8.twin == bf.name and bf.twin is None and f8.flops() == bf.flops()
  q_o = 2 * 32 * 32 * 128 * 2                     # bf16 q and o
  assert bf.bytes() == q_o + 32 * 4096 * 8 * 256 * 2 and f8.bytes() == q_o + 32 * 4096 * 8 * 256
  p8 = by["prefill_causal_b4_t4096_h32_d128_fp8"]  # float8 q, k, v; bf16 o
  assert p8.bytes() == 4 * 4096 * 32 * 128 * (1 + 2 + 1 + 1)
  for dens in (0.1, 0.3, 0.5):
    bs = next(w for w in workloads.STANDARD if w.name.endswith(f"density{dens}"))
    m = bs.block_mask()
    assert m.shape == (32, 128, 128) and (m.sum(-1) == round(dens * 128)).all()
    assert bs.flops() == pytest.approx(4 * 32 * 8192 * 8192 * 128 * round(dens * 128) / 128)


def test_rows_are_complete(result):
  _, res = result
  (meta,) = res["runs"]
  assert meta["tiny"] and meta["ceilings"]["copy_gbps"] > 0 and meta["ceilings"]["matmul_tflops"] > 0
  rows = res["rows"]
  assert {r["workload"] for r in rows} == set(WORKLOADS)
  for r in rows:
    for key in ("device", "jax_version", "date", "workload", "shape", "dtype", "impl", "status"):
      assert r[key], (key, r)
    assert r["status"] in ("ok", "unavailable", "error"), r
    if r["status"] != "ok":
      assert r["reason"], r
  xla = [r for r in rows if r["impl"].endswith("[xla]")]
  # decode x3; append: attention + prefill; bwd; mla: jattn + jax.nn; block-sparse
  assert len(xla) == 9
  for r in xla:
    assert r["status"] == "ok", r
    assert r["median_ms"] > 0 and math.isfinite(r["median_ms"])
    assert r["tflops"] > 0 and r["gbps"] > 0 and 0 < r["frac_ceiling"]
    assert r["max_rel_err"] < 2e-2, r  # bf16 vs a float32 reference
    assert r["chosen"] in ("xla", None) and r["bound"] in ("compute", "memory")
  # the dense baseline beside block-sparse: timed on a GPU, and says why not elsewhere
  (base,) = [r for r in rows if r["family"] == "baseline"]
  if jax.default_backend() == "gpu":
    assert base["status"] == "ok" and base["flops"] > 0, base
    assert base["max_rel_err"] is None and not base["err_flag"], base   # another op
  else:
    assert base["status"] == "unavailable" and "GPU" in base["reason"]


def test_fp8_rows_compare_with_their_bf16_twin(result):
  path, res = result
  by = {(r["workload"], r["impl"]): r for r in res["rows"]}
  bf = by[("decode_gqa32x8_b32_s4096_d128_p16", "jattn.decode[xla]")]
  f8 = by[("decode_gqa32x8_b32_s4096_d128_p16_fp8", "jattn.decode[xla]")]
  assert f8["dtype"] == "float8_e4m3fn" and f8["twin"] == bf["workload"]
  assert f8["vs_bf16_jattn"] == pytest.approx(bf["median_ms"] / f8["median_ms"])
  assert f8["vs_best_peer"] is None and bf["vs_bf16_jattn"] is None
  assert not any(r["family"] == "peer" for r in res["rows"] if r["workload"] == f8["workload"])
  with open(os.path.splitext(path)[0] + ".md") as f:
    assert "× bf16 jattn" in f.read()


def test_interleaved_pair(result):
  """Each workload with a timed jattn row and a timed peer re-times its fastest jattn row
  against its fastest peer in alternating repetitions; the markdown shows the ratio."""
  path, res = result
  for w in {r["workload"] for r in res["rows"]}:
    rows = [r for r in res["rows"] if r["workload"] == w and r["status"] == "ok"]
    mine = [r for r in rows if r["family"] == "jattn" and not r.get("twin")]
    peers = [r for r in rows if r["family"] == "peer"]
    marked = [r for r in rows if r.get("interleaved")]
    if not (mine and peers):
      assert not marked, w
      continue
    (r,) = marked
    assert r is min(mine, key=lambda x: x["median_ms"]), w
    i = r["interleaved"]
    assert i["vs"] == min(peers, key=lambda x: x["median_ms"])["impl"], w
    assert i["rounds"] == run.INTERLEAVE_ROUNDS and i["ms"] > 0 and i["other_ms"] > 0
    assert i["ratio"] > 0 and math.isfinite(i["ratio"])
  assert any(r.get("interleaved") for r in res["rows"])
  with open(os.path.splitext(path)[0] + ".md") as f:
    assert "interleaved " in f.read()


def test_interleave_alternates_and_keeps_two():
  """Contenders keeps the fastest jattn row and the fastest peer (a peer over the
  baseline); interleave times them A B, B A, ... and takes medians."""
  class Prep:
    def __init__(self, log, name):
      self.fn, self.args = (lambda: log.append(name)), [()]
  log = []
  row = lambda impl, fam, ms: dict(impl=impl, family=fam, status="ok", median_ms=ms, calls=1)
  c = run.Contenders()
  slow, fast = row("jattn.a", "jattn", 2.0), row("jattn.b", "jattn", 1.0)
  base, peer = row("dense", "baseline", 0.5), row("cudnn", "peer", 3.0)
  for r in (slow, fast, base, peer, row("other", "peer", 4.0)):
    c.offer(r, Prep(log, r["impl"]))
  assert c.best["jattn"][0] is fast and c.best["peer"][0] is peer and c.best["baseline"][0] is base
  run.interleave(c, rounds=3)
  assert log == ["jattn.b", "cudnn", "cudnn", "jattn.b", "jattn.b", "cudnn"]
  assert fast["interleaved"]["vs"] == "cudnn" and fast["interleaved"]["rounds"] == 3
  assert "interleaved" not in peer


def test_absent_peer_says_why(result):
  _, res = result
  tok = [r for r in res["rows"] if r["impl"] == "tokamax.mosaic"]
  assert tok and all(r["status"] == "ok" or r["reason"] for r in tok)


def test_markdown_and_plot(result):
  path, res = result
  stem = os.path.splitext(path)[0]
  with open(stem + ".md") as f:
    md = f.read()
  for w in WORKLOADS:
    assert f"`{w}`" in md
  assert "| workload |" in md and "jattn.attention[xla]" in md
  if _has_matplotlib():
    assert os.path.getsize(stem + ".png") > 1000


def test_readme_markers(result, tmp_path):
  _, res = result
  readme = tmp_path / "README.md"
  readme.write_text("intro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\noutro\n")
  assert report.update_readme(str(readme), res)
  text = readme.read_text()
  assert "old" not in text and "decode_skewed_lengths" in text and text.endswith("outro\n")


def _has_matplotlib():
  try:
    import matplotlib  # noqa: F401
    return True
  except ImportError:
    return False


def test_merge_keeps_one_run_per_workload(tmp_path):
  """Re-measuring one peer of a workload must not leave jattn's ratio against the old
  peers beside the new peer's time: the workload then holds this run's rows only. A
  workload this run did not measure, or whose peers a deadline kept it from reaching,
  keeps its earlier rows."""
  path = str(tmp_path / "r.json")
  def row(run, w, impl, fam, ms, status="ok"):
    return dict(run_id=run, workload=w, impl=impl, family=fam, status=status, median_ms=ms)
  run.merge(path, dict(run_id="A"), [
      row("A", "w1", "jattn.x", "jattn", 10.0), row("A", "w1", "cudnn", "peer", 14.0),
      row("A", "w2", "jattn.x", "jattn", 5.0), row("A", "w2", "cudnn", "peer", 6.0)])
  res = run.merge(path, dict(run_id="B"), [
      row("B", "w1", "cudnn", "peer", 9.1),
      row("B", "w2", "jattn.x", "jattn", 4.0), row("B", "w2", "cudnn", "peer", 0, "skipped")])
  got = {(r["workload"], r["impl"]): r for r in res["rows"]}
  assert set(got) == {("w1", "cudnn"), ("w2", "jattn.x"), ("w2", "cudnn")}
  assert got[("w1", "cudnn")]["run_id"] == "B"                   # w1: this run only
  assert {got[("w2", i)]["run_id"] for i in ("jattn.x", "cudnn")} == {"A"}   # w2: kept
  assert got[("w2", "jattn.x")]["vs_best_peer"] == pytest.approx(6.0 / 5.0)
  assert [m["run_id"] for m in res["runs"]] == ["A", "B"]


def test_probe_rounds_interleave_and_take_the_median():
  """`more_rounds`: rounds 2..N time the rows in turn (A B A B), a stopped run starts no
  new round, and each row's ms is the median of its rounds."""
  from benchmarks.timing import more_rounds
  order, times = [], {"a": iter([5.0, 1.0]), "b": iter([7.0, 9.0])}

  def time_ms(fn, args):
    order.append(fn)
    return next(times[fn])

  rows = {"a": dict(ms_rounds=[3.0]), "b": dict(ms_rounds=[8.0])}
  more_rounds([(rows[k], k, ()) for k in "ab"], 3, time_ms)
  assert order == ["a", "b", "a", "b"]
  assert rows["a"]["ms_rounds"] == [3.0, 5.0, 1.0] and rows["a"]["ms"] == 3.0
  assert rows["b"]["ms"] == 8.0
  stopped = dict(ms_rounds=[2.0])
  more_rounds([(stopped, "a", ())], 4, time_ms, keep_going=lambda: False)
  assert stopped == dict(ms_rounds=[2.0], ms=2.0)


def test_bench_sizes_repetitions_by_time():
  """`bench`: a repetition holds about `rep_s` of calls (from a calibration burst, not the
  first single call, which carries the host's dispatch and wake-up), at most `max_calls`,
  one for slow functions; the figure is per call."""
  import time as _time
  import jax.numpy as jnp
  from jattn.bench.timing import bench

  counter = {"n": 0}

  def slow(x):   # ~4 ms a call on the host clock
    counter["n"] += 1
    _time.sleep(0.004)
    return x + 1

  x = jnp.ones(4)
  t = bench(slow, [(x,)], reps=2, rep_s=0.04)
  assert 5 <= t.calls <= 12 and 0.003 < t.median_s < 0.02
  assert counter["n"] >= 2 + 2 * t.calls + 2   # two single calls, a burst, the repetitions
  assert bench(slow, [(x,)], reps=2, rep_s=0.04, max_calls=3).calls == 3
  assert bench(slow, [(x,)], reps=2, rep_s=0.001).calls == 1


def test_device_span_without_gpu_says_so():
  """`device_span` reads kernel records from GPU stream lines only; on the CPU it returns
  an error instead of a figure (the harness's `--device-span` rows then carry it)."""
  import jax.numpy as jnp
  from benchmarks.timing import device_span
  if jax.default_backend() == "gpu":
    pytest.skip("CPU behaviour")
  r = device_span(jax.jit(lambda x: x * 2), [(jnp.ones(8),)], calls=3)
  assert r["error"].startswith("no kernel records") and "span_s" not in r


def test_kernel_trace_summary():
  """benchmarks.kernel_trace: region lengths per consumer (cycles from the trace's ts,
  which is (ns + cycles) / 1e3), the producer's trace ignored, gaps between items."""
  from benchmarks import kernel_trace
  ev = lambda name, ph, cyc, tid: dict(name=name, ph=ph, ts=cyc / 1e3, pid=1, tid=tid)
  events = []
  for tid in (1, 2, 3):                       # block 0: consumers 0 and 1, producer
    t = 0
    for _ in range(2):                        # two items
      for name, length in (("item_start", 100), ("steps", 1000), ("item_end", 300)):
        events += [ev(name, "B", t, tid), ev(name, "E", t + length, tid)]
        t += length
      t += 50                                 # the loop's own gap
  out = kernel_trace.summarize(events, ghz=2.0)
  assert set(out) == {"consumer0", "consumer1"}
  c = out["consumer1"]
  assert c["steps"]["median_cycles"] == 1000 and c["steps"]["count"] == 2
  assert c["item_end"]["median_us"] == 300 / 2.0 / 1e3
  assert c["gap"]["median_cycles"] == 50 and c["gap"]["count"] == 1


def test_flag_probe_causal_shapes_by_head_dim():
  from benchmarks import flag_probe
  assert flag_probe.causal_shapes() == list(flag_probe.CAUSAL)
  assert [s[-1] for s in flag_probe.causal_shapes("128,256")] == [128, 128, 128, 256]
  with pytest.raises(SystemExit, match="no causal shape"):
    flag_probe.causal_shapes("96")


def test_flag_probe_config_switch_forces_a_field_on():
  """`cfg:FIELD` forces a prefill Config field on through `prefill.resolve` while its build
  is set, and leaves the config's own resolution otherwise; unknown fields are refused."""
  from benchmarks import flag_probe
  from jattn.pallas import prefill as P
  plain = P.resolve
  try:
    flags = flag_probe.Flags("cfg:early_qk")
    assert [label for label, _ in flags.builds] == ["off", "cfg:early_qk"]
    assert P.resolve(P.Config(), True, 128, 128).early_qk is False   # its own rule
    with flags.set(flags.builds[1][1]):
      forced = P.resolve(P.Config(), True, 128, 128)
      assert forced.early_qk and forced.lazy_rescale
    assert P.resolve(P.Config(), True, 128, 128).early_qk is False
    with pytest.raises(SystemExit, match="no field"):
      flag_probe.Switch("cfg:no_such_field")
  finally:
    P.resolve = plain


def test_sass_dump_reads_ptx_reports_and_loops(tmp_path, capsys):
  """`sass_dump` splits a dump into its PTX and ptxas's report, and counts opcodes per
  backward branch of `nvdisasm -c` output."""
  from benchmarks import sass_dump
  dump = tmp_path / "k.dump"
  dump.write_text(".version 9.0\n.target sm_90a\n\nptxas info    : Compiling entry 'k'\n"
                  "ptxas warning : Registers are spilled, 8 bytes spill stores\n"
                  "ptxas info    : Used 168 registers\n")
  assert sass_dump.ptx(str(dump)) == ".version 9.0\n.target sm_90a\n\n"
  sass_dump.summary(str(dump))
  report = capsys.readouterr().out
  assert "spill" in report and "Used 168 registers" in report and "Compiling" not in report
  sass = tmp_path / "k.sass"
  sass.write_text(
      "        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
      ".L_x_0:\n"
      "        /*0010*/                   HGMMA.64x64x16.F32.BF16 R88, gdesc[UR16], RZ ;\n"
      "        /*0020*/                   MUFU.EX2 R2, R3 ;\n"
      "        /*0030*/              @!P1 MUFU.EX2 R4, R5 ;\n"
      "        /*0040*/               @P0 BRA `(.L_x_0) ;\n"
      "        /*0050*/                   EXIT ;\n")
  sass_dump.loops(str(sass))
  assert capsys.readouterr().out.strip() == (
      "0x00010-0x00040: 4 instructions; HGMMA 1, MUFU.EX2 2")
