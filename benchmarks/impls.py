"""Everything the harness times, behind one interface.

An entry is (label, family, builder). `builder(wl, data)` returns a `Prepared` (a jitted
function, its argument tuples, one per rotated input set, and `canon` that maps its output
to the harness's canonical layout) or raises `Unavailable(reason)`; any other exception is
recorded as an error. Nothing here imports a kernel module directly: jattn is reached only
through its public API (`jattn.attention`, `jattn.decode`, `jattn.prefill` with
`implementation=`), the peers through their own public entry points.

Canonical outputs: dense forward [B,T,Nq,Dv] (block_sparse too); decode and mla
[B,Nq,Dv]; bwd (dq, dk, dv) in the dense layouts. Families: "jattn", "peer", and
"baseline" (jattn's own dense kernel beside the block-sparse rows, what issue 8's bars
compare against). Each peer gets the inputs in its native layout, built outside the timed call.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np
import jax.numpy as jnp

import jattn
from benchmarks import workloads as W

STUBS = os.path.join(os.path.dirname(__file__), "_stubs")

# The XLA reference materializes float32 logits (or gathered float32 K/V); above these
# sizes it would run out of memory or spend the run's minutes (on an H100, 8 GiB of
# logits: 14 s to compile, 40 ms a call), so its row says so instead. `--xla-cap-gib`
# raises the forward cap.
XLA_CAP_GIB = {"fwd": 4.0, "bwd": 2.0}


class Unavailable(Exception):
  """This implementation cannot serve this workload (the reason goes into the row)."""


@dataclasses.dataclass
class Prepared:
  fn: Callable
  args: list[tuple]
  canon: Callable[[Any], Any] = lambda out: out
  chosen: Optional[Callable[[], Optional[str]]] = None   # which jattn impl ran
  note: str = ""
  flops: Optional[float] = None   # when this row does other work than the workload counts


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


# ------------------------------------------------------------------------ data

class Data:
  """Inputs of one workload, built lazily per layout and shared by the implementations."""

  def __init__(self, wl: W.Workload, seed: int = 0):
    self.wl = wl
    self.key = jax.random.key(seed, impl="rbg")  # compiles faster than threefry
    self._cache = {}

  def memo(self, name, make):
    if name not in self._cache:
      self._cache[name] = make()
    return self._cache[name]

  def n_sets(self) -> int:
    return W.num_input_sets(self.wl.bytes())

  @property
  def dense(self) -> list[dict]:
    """prefill/append/bwd: q [B,T,Nq,D], k/v [B,S,Nkv,D] (+ do for bwd)."""
    return self.memo("dense", lambda: W.dense_inputs(self.wl, self.key, self.n_sets()))

  @property
  def table(self):
    return self.memo("table", lambda: W.page_table(self.wl))

  @property
  def paged(self) -> list[dict]:
    """The paged form: cache (shuffled pages), table, kv_lens; q packed [B*T,Nq,D] with
    q_offsets for prefill/append, q [B,Nq,D] for decode."""
    def make():
      wl = self.wl
      table, num_pages = self.table
      kv_lens = jnp.asarray(wl.kv_lens())
      sets = []
      if wl.kind == "decode":
        ones = jnp.ones((wl.num_kv_heads,), jnp.float32) if wl.fp8 else None
        for key in jax.random.split(jax.random.fold_in(self.key, 1), self.n_sets()):
          q, k_pages, v_pages = W.decode_set(wl, num_pages, key)
          cache = jattn.PagedKVCache(k_pages, v_pages, ones, ones)
          sets.append(dict(q=q, cache=cache, table=table, kv_lens=kv_lens))
        return sets
      q_offsets = jnp.arange(wl.batch + 1, dtype=jnp.int32) * wl.q_len
      for d in self.dense:
        cache = jattn.PagedKVCache(W.to_pages(d["k"], table, num_pages, wl.pages),
                                   W.to_pages(d["v"], table, num_pages, wl.pages))
        sets.append(dict(q=d["q"].reshape(-1, wl.num_q_heads, wl.head_dim), cache=cache,
                         table=table, kv_lens=kv_lens, q_offsets=q_offsets))
      return sets
    return self.memo("paged", make)

  @property
  def mla(self) -> list[dict]:
    """MLA inputs: q_nope, q_pe, ckv/kpe pages (shuffled), table, kv_lens."""
    def make():
      table, num_pages = self.table
      kv_lens = jnp.asarray(self.wl.kv_lens())
      return [dict(W.mla_set(self.wl, num_pages, key), table=table, kv_lens=kv_lens)
              for key in jax.random.split(jax.random.fold_in(self.key, 2), self.n_sets())]
    return self.memo("mla", make)

  @property
  def layout(self):
    """block_sparse: the workload's layout as a jattn.block_sparse.BlockSparseLayout."""
    return self.memo("layout", lambda: jattn.block_sparse.from_dense(
        self.wl.block_mask(), (self.wl.block, self.wl.block)))

  @property
  def decode_dense(self) -> list[dict]:
    """Decode inputs for dense peers: q [B,1,Nq,D], k/v [B, max_pages*ps, Nkv, D]
    gathered from the same pages (tokens past kv_len are junk, masked by lengths)."""
    def make():
      return [dict(q=p["q"][:, None], k=W.gather_dense(p["cache"].k_pages, p["table"]),
                   v=W.gather_dense(p["cache"].v_pages, p["table"]), kv_lens=p["kv_lens"])
              for p in self.paged]
    return self.memo("decode_dense", make)


# ------------------------------------------------------------------------ jattn

def jattn_families(op: str) -> list[str]:
  """Families to time for a jattn op: those registered, and always "pallas" (so that a
  missing kernel shows up as a row with the dispatcher's reason)."""
  fams = {i.family for i in jattn.implementations(op)} | {"pallas"}
  return [f for f in ("pallas", "cuda", "xla") if f in fams]


def _chosen(op):
  return lambda: jattn.dispatch.chosen(op)


def _guard(wl: W.Workload, op: str, family: str):
  if family in ("pallas", "cuda") and not on_gpu():
    raise Unavailable(f"no GPU here ({family} would run interpreted; not timed)")
  if family != "xla":
    return
  B, T, S, Nq = wl.batch, wl.q_len, wl.kv_len, wl.num_q_heads
  if op in ("attention", "block_sparse_attention"):
    gib = B * Nq * T * S * 4 / 2**30
  elif op == "mla_decode":  # gathers float32 latents of max_pages * page_size tokens
    gib = B * S * wl.head_dim * 4 / 2**30
  elif op == "prefill":  # the reference attends every packed row to every packed key
    gib = Nq * (B * T) * (B * S) * 4 / 2**30
  else:  # decode gathers float32 K and V of max_pages * page_size tokens per sequence
    gib = 2 * B * S * wl.num_kv_heads * wl.head_dim * 4 / 2**30
  cap = XLA_CAP_GIB["bwd" if wl.kind == "bwd" else "fwd"]
  if gib > cap:
    raise Unavailable(f"skipped: the XLA reference would materialize {gib:.1f} GiB of "
                      f"float32 intermediates (cap {cap:g} GiB for {wl.kind}; --xla-cap-gib)")


def _mask_kw(wl):
  return dict(causal=wl.causal, sliding_window=wl.window)


def _fp8_kw(wl):
  """float8 q, k, v carry their scales (1: the stored values are the real ones)."""
  return dict(q_scale=1.0, k_scale=1.0, v_scale=1.0) if wl.fp8 else {}


def jattn_attention(family):
  def build(wl, data):
    _guard(wl, "attention", family)
    f = functools.partial(jattn.attention, implementation=family, **_mask_kw(wl),
                          **_fp8_kw(wl))
    if wl.kind == "bwd":
      return Prepared(_vjp(f), [(d["q"], d["k"], d["v"], d["do"]) for d in data.dense],
                      chosen=_chosen("attention"))
    return Prepared(jax.jit(f), [(d["q"], d["k"], d["v"]) for d in data.dense],
                    chosen=_chosen("attention"))
  return build


def jattn_prefill(family):
  def build(wl, data):
    if wl.kind not in ("prefill", "append"):
      raise Unavailable("forward only")
    _guard(wl, "prefill", family)
    f = jax.jit(functools.partial(jattn.prefill, implementation=family, **_mask_kw(wl)))
    args = [(p["q"], p["cache"], p["table"], p["kv_lens"], p["q_offsets"]) for p in data.paged]
    shape = (wl.batch, wl.q_len, wl.num_q_heads, wl.head_dim)
    return Prepared(f, args, canon=lambda o: o.reshape(shape), chosen=_chosen("prefill"),
                    note=f"paged, page_size {wl.pages}, shuffled pages")
  return build


def jattn_decode(family):
  def build(wl, data):
    _guard(wl, "decode", family)
    f = jax.jit(functools.partial(jattn.decode, implementation=family))
    args = [(p["q"], p["cache"], p["table"], p["kv_lens"]) for p in data.paged]
    return Prepared(f, args, chosen=_chosen("decode"))
  return build


def jattn_decode_planned(balanced: bool):
  """FlashInfer's plan/run split: the plan is made once on the host from the lengths
  (outside the timed region) and reused by every call. `balanced=False` is the
  unbalanced baseline: one unit per sequence (no split-K), whatever the lengths."""
  def build(wl, data):
    _guard(wl, "decode", "pallas")
    f = jax.jit(lambda q, c, t, kl, plan: jattn.decode(q, c, t, kl, plan=plan,
                                                       implementation="pallas"))
    extra = {} if balanced else dict(min_unit_keys=1 << 30)
    args = []
    for p in data.paged:
      plan = jattn.plan_decode(np.asarray(p["kv_lens"]), wl.pages, wl.num_q_heads,
                               wl.num_kv_heads, wl.head_dim, **extra)
      args.append((p["q"], p["cache"], p["table"], p["kv_lens"], plan))
    return Prepared(f, args, chosen=_chosen("decode"),
                    note="host plan" if balanced else "one unit per sequence (no plan)")
  return build


def jattn_mla(family):
  def build(wl, data):
    _guard(wl, "mla_decode", family)
    f = jax.jit(functools.partial(jattn.mla_decode, sm_scale=wl.sm_scale,
                                  implementation=family))
    args = [(m["q_nope"], m["q_pe"], m["ckv"], m["kpe"], m["table"], m["kv_lens"])
            for m in data.mla]
    return Prepared(f, args, chosen=_chosen("mla_decode"), note=f"page_size {wl.pages}, shuffled pages")
  return build


def jattn_block_sparse(family):
  def build(wl, data):
    _guard(wl, "block_sparse_attention", family)
    f = jax.jit(functools.partial(jattn.block_sparse_attention, implementation=family))
    layout = data.layout
    return Prepared(f, [(d["q"], d["k"], d["v"], layout) for d in data.dense],
                    chosen=_chosen("block_sparse_attention"))
  return build


def jattn_block_sparse_planned(wl, data):
  """The plan/run split: the tile lists are made once per layout (outside the timed
  region) and every call reuses them, as every layer of a model would."""
  _guard(wl, "block_sparse_attention", "pallas")
  f = jax.jit(lambda q, k, v, layout, plan: jattn.block_sparse_attention(
      q, k, v, layout, plan=plan, implementation="pallas"))
  layout = data.layout
  plan = jattn.plan_block_sparse(layout, wl.q_len, wl.kv_len)
  return Prepared(f, [(d["q"], d["k"], d["v"], layout, plan) for d in data.dense],
                  chosen=_chosen("block_sparse_attention"), note="plan made once per layout")


def dense_baseline(wl, data):
  """jattn's dense kernel on the block-sparse workload's shape (every block computed)."""
  prep = jattn_attention("pallas")(wl, data)
  prep.flops = 2.0 * wl.batch * wl.num_q_heads * (wl.head_dim + wl.dv) * wl.q_len * wl.kv_len
  prep.note = "dense non-causal: FLOPs count every (query, key) pair"
  return prep


def auto_choice(wl: W.Workload, data: Data, op: str) -> Optional[str]:
  """Which implementation `implementation=None` picks here (traced only, not run)."""
  try:
    if op == "decode":
      p = data.paged[0]
      jax.eval_shape(jattn.decode, p["q"], p["cache"], p["table"], p["kv_lens"])
    elif op == "prefill":
      p = data.paged[0]
      jax.eval_shape(functools.partial(jattn.prefill, **_mask_kw(wl)), p["q"], p["cache"],
                     p["table"], p["kv_lens"], p["q_offsets"])
    elif op == "mla_decode":
      m = data.mla[0]
      jax.eval_shape(functools.partial(jattn.mla_decode, sm_scale=wl.sm_scale), m["q_nope"],
                     m["q_pe"], m["ckv"], m["kpe"], m["table"], m["kv_lens"])
    elif op == "block_sparse_attention":
      d = data.dense[0]
      jax.eval_shape(jattn.block_sparse_attention, d["q"], d["k"], d["v"], data.layout)
    else:
      d = data.dense[0]
      jax.eval_shape(functools.partial(jattn.attention, **_mask_kw(wl), **_fp8_kw(wl)),
                     d["q"], d["k"], d["v"])
    return jattn.dispatch.chosen(op)
  except Exception as e:  # noqa: BLE001  (recorded, not fatal)
    return f"error: {type(e).__name__}"


# ------------------------------------------------------------------------ peers

def _vjp(f):
  """fwd + bwd: (q, k, v, do) -> (dq, dk, dv)."""
  return jax.jit(lambda q, k, v, do: jax.vjp(f, q, k, v)[1](do))


def _bottom_right_mask(wl):
  t = jnp.arange(wl.q_len)[:, None] + (wl.kv_len - wl.q_len)
  return (jnp.arange(wl.kv_len)[None, :] <= t)[None, None]


def _dense_peer(wl, data, f, *, extra=(), note=""):
  if wl.kind == "bwd":
    return Prepared(_vjp(f), [(d["q"], d["k"], d["v"], d["do"]) for d in data.dense], note=note)
  g = jax.jit(f)
  return Prepared(g, [(d["q"], d["k"], d["v"], *extra) for d in data.dense], note=note)


def _decode_dense_peer(wl, data, f):
  """Dense decode peer on q [B,1,Nq,D] and gathered k/v; kv lengths only when skewed."""
  if wl.skewed:
    g = jax.jit(lambda q, k, v, lens: f(q, k, v, key_value_seq_lengths=lens))
    args = [(d["q"], d["k"], d["v"], d["kv_lens"]) for d in data.decode_dense]
  else:
    g = jax.jit(f)
    args = [(d["q"], d["k"], d["v"]) for d in data.decode_dense]
  return Prepared(g, args, canon=lambda o: o[:, 0], note="dense K/V of the same size")


def mla_dense_peer(implementation):
  """MLA through jax.nn.dot_product_attention on the gathered latents: one kv head with
  K = V = [ckv, kpe] (D = 576); the first Dv columns of the output are MLA's (V must have
  K's shape there). The gather runs outside the timed call."""
  def build(wl, data):
    if implementation == "cudnn" and not on_gpu():
      raise Unavailable("cuDNN needs a GPU")
    if implementation == "xla":
      _guard(wl, "mla_decode", "xla")
    f = functools.partial(jax.nn.dot_product_attention, scale=wl.sm_scale,
                          implementation=implementation)
    g = jax.jit(lambda q, kv, lens: f(q, kv, kv, key_value_seq_lengths=lens)[:, 0, :, :wl.dv])
    args = []
    for m in data.mla:
      kv = jnp.concatenate([m["ckv"], m["kpe"]], -1)[m["table"]]
      kv = kv.reshape(wl.batch, -1, 1, wl.head_dim)
      q = jnp.concatenate([m["q_nope"], m["q_pe"]], -1)[:, None]
      args.append((q, kv, m["kv_lens"]))
    return Prepared(g, args, note="dense gathered latents, K = V = [ckv, kpe]")
  return build


def cudnn(wl, data):
  if not on_gpu():
    raise Unavailable("cuDNN needs a GPU")
  f = functools.partial(jax.nn.dot_product_attention, implementation="cudnn")
  if wl.kind == "decode":
    return _decode_dense_peer(wl, data, f)
  if wl.q_len != wl.kv_len and wl.causal:
    # jax.nn's causal mask is top-left aligned; bottom-right goes in as a boolean mask.
    mask = _bottom_right_mask(wl)
    return _dense_peer(wl, data, lambda q, k, v, m: f(q, k, v, mask=m), extra=(mask,),
                       note="bottom-right causal passed as a mask (bias)")
  window = (wl.window, 0) if wl.window is not None else None
  return _dense_peer(wl, data, functools.partial(f, is_causal=wl.causal,
                                                 local_window_size=window))


_TOKAMAX: dict = {}


def import_tokamax():
  """(module, None) or (None, reason). tokamax imports `xprof` at load; where xprof is
  missing a stub (benchmarks/_stubs) is put on sys.path for the import only."""
  if "mod" in _TOKAMAX:
    return _TOKAMAX["mod"], _TOKAMAX["why"]
  added = False
  try:
    import xprof.cli.tools  # noqa: F401
  except Exception:  # noqa: BLE001
    sys.path.insert(0, STUBS)
    added = True
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      import tokamax
    mod, why = tokamax, None
    # tokamax runs its default configs (no autotuning) and logs an "autotuning cache
    # miss" warning for every new shape through absl; keep the run's log readable.
    import absl.logging
    absl.logging.set_verbosity(absl.logging.ERROR)
  except Exception as e:  # noqa: BLE001
    mod, why = None, f"tokamax not importable: {type(e).__name__}: {e}"
  finally:
    if added:
      sys.path.remove(STUBS)
  _TOKAMAX.update(mod=mod, why=why)
  return mod, why


def tokamax_impl(name):
  def build(wl, data):
    tk, why = import_tokamax()
    if tk is None:
      raise Unavailable(why)
    if not on_gpu():
      raise Unavailable(f"tokamax {name} needs a GPU")
    f = functools.partial(tk.dot_product_attention, implementation=name)
    if wl.kind == "decode":
      return _decode_dense_peer(wl, data, f)
    if wl.q_len != wl.kv_len and wl.causal:
      # (S, S - T) window = bottom-right causal in tokamax's CausalMask terms.
      f = functools.partial(f, local_window_size=(wl.kv_len, wl.kv_len - wl.q_len))
    else:
      window = (wl.window, 0) if wl.window is not None else None
      f = functools.partial(f, is_causal=wl.causal, local_window_size=window)
    return _dense_peer(wl, data, f)
  return build


def _jax_gpu_op(module: str):
  if not on_gpu():
    raise Unavailable("Pallas GPU op needs a GPU")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import importlib
    return importlib.import_module(f"jax.experimental.pallas.ops.gpu.{module}")


def jax_mha(wl, data):
  if wl.kind == "decode":
    raise Unavailable("dense prefill kernel")
  if wl.num_q_heads != wl.num_kv_heads:
    raise Unavailable("no GQA (same number of q and kv heads only)")
  if wl.window is not None:
    raise Unavailable("no sliding window")
  if wl.q_len != wl.kv_len and wl.causal:
    raise Unavailable("causal mask is top-left aligned only")
  mod = _jax_gpu_op("attention")
  f = lambda q, k, v: mod.mha(q, k, v, None, sm_scale=wl.sm_scale, causal=wl.causal)
  return _dense_peer(wl, data, f)


def jax_decode_gqa(wl, data):
  if wl.kind != "decode":
    raise Unavailable("decode kernel")
  mod = _jax_gpu_op("decode_attention")
  f = lambda q, k, v, **kw: mod.gqa(q[:, 0], k, v, kv_seq_len=kw.get("key_value_seq_lengths"),
                                    sm_scale=wl.sm_scale)[:, None]
  return _decode_dense_peer(wl, data, f)


def jax_paged_attention(wl, data):
  if wl.kind != "decode":
    raise Unavailable("decode kernel")
  mod = _jax_gpu_op("paged_attention")
  # Its layout is [Nkv, P, page_size, D]; it applies no softmax scale (q is prescaled).
  args = [(p["q"] * jnp.asarray(wl.sm_scale, p["q"].dtype),
           jnp.moveaxis(p["cache"].k_pages, 2, 0), jnp.moveaxis(p["cache"].v_pages, 2, 0),
           p["table"], p["kv_lens"]) for p in data.paged]
  return Prepared(jax.jit(mod.paged_attention), args,
                  note="own layout [Nkv,P,ps,D], same shuffled pages, q prescaled")


# ------------------------------------------------------------------------ the table

def entries(wl: W.Workload) -> list[tuple[str, str, Callable]]:
  """(label, family, builder) for a workload; family is "jattn" or "peer"."""
  rows = []
  if wl.kind == "mla":
    rows += [(f"jattn.mla_decode[{fam}]", "jattn", jattn_mla(fam))
             for fam in jattn_families("mla_decode")]
    return rows + [("cudnn", "peer", mla_dense_peer("cudnn")),
                   ("jax.nn.dot_product_attention[xla]", "peer", mla_dense_peer("xla"))]
  if wl.kind == "block_sparse":
    rows += [(f"jattn.block_sparse_attention[{fam}]", "jattn", jattn_block_sparse(fam))
             for fam in jattn_families("block_sparse_attention")]
    if "pallas" in jattn_families("block_sparse_attention"):
      rows.append(("jattn.block_sparse_attention[pallas,plan]", "jattn",
                   jattn_block_sparse_planned))
    return rows + [("jattn.attention[pallas] dense", "baseline", dense_baseline)]
  if wl.kind == "decode":
    for fam in jattn_families("decode"):
      rows.append((f"jattn.decode[{fam}]", "jattn", jattn_decode(fam)))
    if "pallas" in jattn_families("decode"):
      rows.append(("jattn.decode[pallas,plan]", "jattn", jattn_decode_planned(True)))
      rows.append(("jattn.decode[pallas,noplan]", "jattn", jattn_decode_planned(False)))
  else:
    ops = ["attention"] if wl.kind == "bwd" or wl.fp8 else (
        ["prefill", "attention"] if wl.kind == "append" else ["attention", "prefill"])
    for op in ops:
      for fam in jattn_families(op):
        build = jattn_attention(fam) if op == "attention" else jattn_prefill(fam)
        rows.append((f"jattn.{op}[{fam}]", "jattn", build))
  if wl.fp8:   # no peer takes float8 here: the bf16 twin's rows are the comparison
    return rows
  rows.append(("cudnn", "peer", cudnn))
  rows.append(("tokamax.mosaic", "peer", tokamax_impl("mosaic")))
  rows.append(("tokamax.triton", "peer", tokamax_impl("triton")))
  if wl.kind == "decode":
    rows.append(("jax.decode_attention.gqa", "peer", jax_decode_gqa))
    rows.append(("jax.paged_attention", "peer", jax_paged_attention))
  else:
    rows.append(("jax.attention.mha", "peer", jax_mha))
  return rows


def jattn_ops(wl: W.Workload) -> list[str]:
  if wl.fp8 and wl.kind == "prefill":
    return ["attention"]
  return {"decode": ["decode"], "bwd": ["attention"], "append": ["prefill", "attention"],
          "mla": ["mla_decode"], "block_sparse": ["block_sparse_attention"]}.get(
      wl.kind, ["attention", "prefill"])
