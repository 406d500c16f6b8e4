"""The main job: continuous-batching generation with a Llama-style model on jattn.

    python -m jattn.demo [--size tiny|1b] [--steps N] [--impl NAME] [--no-baseline]

A host-side scheduler feeds two jitted steps (`jax.jit`, caches donated):
  prefill  admits waiting requests (up to `lanes` per step and `prefill_tokens` tokens),
           packs their prompts, appends K/V to the paged cache (`jattn.append_kv`) and
           runs `jattn.prefill`; each prompt's last logits give its first token;
  decode   one token for every running request: `append_kv` + `jattn.decode` (with
           a `jattn.plan_decode` plan made inside the step from the device lengths).
Requests arrive over time with different prompt and output lengths, get a slot and
pages from a free list, finish after their output length and give the pages back. The
schedule depends only on lengths, so the same requests replay identically.

The check: on a short schedule the jattn loop's logits are compared with (1) the same
loop with every op on implementation="xla" (the reference), fed the same tokens, and
(2) the same model run densely on `jax.nn.dot_product_attention` over prompt + output
(teacher forcing). Exit code 1 if a max relative error exceeds the tolerance, 2 if the
baseline failed to run.

The timed part runs the loop on jattn and then, over the same requests, the same loop on
dense [batch, max_len] caches with `jax.nn.dot_product_attention` (the baseline).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jattn
from jattn import dispatch
from jattn.bench.definitions import rel_err
from jattn.flax import JAX_NN
from jattn.models.llama import CONFIGS, Llama

ATTN_OPS = ("prefill", "decode", "append_kv")


@dataclasses.dataclass(frozen=True)
class Setup:
  """Serving shapes and the request stream of one size."""
  model: str
  batch: int                  # decode slots
  page_size: int
  prompt: tuple[int, int]     # prompt length range (inclusive)
  gen: tuple[int, int]        # output length range (inclusive)
  lanes: int                  # requests per prefill step
  prefill_tokens: int         # packed tokens per prefill step
  steps: int                  # default number of timed steps
  check_requests: int = 6
  check_prompt: tuple[int, int] = (3, 20)
  check_gen: tuple[int, int] = (2, 10)

  @property
  def max_len(self) -> int:
    return self.prompt[1] + self.gen[1] - 1


SIZES = {
    "tiny": Setup("tiny", batch=4, page_size=4, prompt=(4, 32), gen=(4, 24), lanes=2,
                  prefill_tokens=64, steps=48),
    "1b": Setup("1b", batch=64, page_size=16, prompt=(64, 1024), gen=(32, 256), lanes=4,
                prefill_tokens=2048, steps=256, check_prompt=(8, 64), check_gen=(2, 12)),
}
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}


@dataclasses.dataclass
class Request:
  rid: int
  prompt: np.ndarray          # int32 [prompt_len]
  max_new: int
  arrival: int                # scheduler step at which it arrives
  slot: int = -1
  pages: list = dataclasses.field(default_factory=list)
  generated: int = 0


def make_requests(seed: int, n: int, prompt, gen, vocab: int, batch: int, first=None):
  """`n` requests: `first` (default: batch) at step 0, then one every mean_gen / batch
  steps on average, so that the slots stay busy."""
  rng = np.random.default_rng(seed)
  first = batch if first is None else first
  gap = (gen[0] + gen[1]) / 2 / batch
  t, reqs = 0.0, []
  for i in range(n):
    if i >= first:
      t += rng.exponential(gap)
    plen = int(rng.integers(prompt[0], prompt[1] + 1))
    reqs.append(Request(i, rng.integers(0, vocab, plen, dtype=np.int32),
                        int(rng.integers(gen[0], gen[1] + 1)), int(t)))
  return reqs


@dataclasses.dataclass
class Stats:
  steps: int = 0
  prompt_tokens: int = 0
  new_tokens: int = 0         # generated tokens (first tokens from prefill + decode)
  decode_tokens: int = 0
  prefill_s: float = 0.0
  decode_s: float = 0.0
  wall_s: float = 0.0
  finished: int = 0
  decode_steps: list = dataclasses.field(default_factory=list)   # (tokens, seconds) per step

  def line(self) -> str:
    tps = lambda n, s: n / s if s > 0 else float("nan")
    return (f"{self.new_tokens} tokens in {self.wall_s:.3f} s = "
            f"{tps(self.new_tokens, self.wall_s):,.0f} tok/s  (decode "
            f"{tps(self.decode_tokens, self.decode_s):,.0f} tok/s, prefill "
            f"{tps(self.prompt_tokens, self.prefill_s):,.0f} prompt tok/s, "
            f"{self.finished} requests finished, {self.steps} steps)")


@dataclasses.dataclass
class Trace:
  """What a recorded run produced, for the check."""
  logits: dict                # rid -> [n_generated, V] float32
  tokens: dict                # rid -> [n_generated] int32
  decode_inputs: list         # device int32 [B] per decode step


def _cdiv(a, b):
  return -(-a // b)


class Engine:
  """The serving loop over one model. mode "paged" runs on jattn (`implementation` is
  passed to its ops), mode "dense" on jax.nn.dot_product_attention (`implementation` is
  "jax.nn" or "jax.nn:cudnn")."""

  def __init__(self, model: Llama, setup: Setup, *, mode: str = "paged",
               implementation=None, seed: int = 0):
    self.cfg, self.setup, self.mode = model.cfg, setup, mode
    self.implementation = implementation
    self.graphdef, self.state = nnx.split(model)
    self.B = setup.batch
    self.max_pages = _cdiv(setup.max_len, setup.page_size)
    self.num_pages = self.B * self.max_pages
    self.seed = seed
    if mode == "paged":
      self.caches = model.init_paged_caches(self.num_pages, setup.page_size)
      self._prefill = jax.jit(self._prefill_paged, donate_argnums=(1,))
      self._decode = jax.jit(self._decode_paged, donate_argnums=(1,))
    elif mode == "dense":
      self.caches = model.init_dense_caches(self.B, self.max_pages * setup.page_size)
      self._prefill = jax.jit(self._prefill_dense, donate_argnums=(1,))
      self._decode = jax.jit(self._decode_dense, donate_argnums=(1,))
    else:
      raise ValueError(f"mode must be 'paged' or 'dense', got {mode!r}")
    self.served: dict = {}

  # ------------------------------------------------------------------ jitted steps

  def _prefill_paged(self, state, caches, cur, tokens, positions, lane_ids, q_offsets,
                     lane_slots, lane_lens, page_table):
    model = nnx.merge(self.graphdef, state)
    pt = page_table[jnp.clip(lane_slots, 0, self.B - 1)]
    rows = jnp.maximum(q_offsets[1:] - 1, 0)
    logits, caches = model.prefill(tokens, positions, caches, pt, lane_ids, lane_lens,
                                   q_offsets, logits_rows=rows,
                                   implementation=self.implementation)
    nxt = jnp.argmax(logits, -1).astype(jnp.int32)
    cur = cur.at[jnp.where(lane_slots >= 0, lane_slots, self.B)].set(nxt, mode="drop")
    return caches, cur, nxt, logits

  def _decode_paged(self, state, caches, tokens, kv_lens, page_table):
    model = nnx.merge(self.graphdef, state)
    c = self.cfg   # one plan per step for every layer, made under jit (README: host plans)
    plan = jattn.plan_decode(kv_lens, self.setup.page_size, c.n_heads, c.n_kv_heads,
                             c.head_dim)
    logits, caches = model.decode(tokens, caches, page_table, kv_lens, plan=plan,
                                  implementation=self.implementation)
    return caches, jnp.argmax(logits, -1).astype(jnp.int32), logits

  def _prefill_dense(self, state, caches, cur, tokens, lane_lens, lane_slots):
    model = nnx.merge(self.graphdef, state)
    slots = jnp.where(lane_slots >= 0, lane_slots, self.B)
    logits, caches = model.prefill_dense(tokens, lane_lens, caches, slots,
                                         implementation=self.implementation)
    nxt = jnp.argmax(logits, -1).astype(jnp.int32)
    return caches, cur.at[slots].set(nxt, mode="drop"), nxt, logits

  def _decode_dense(self, state, caches, tokens, kv_lens):
    model = nnx.merge(self.graphdef, state)
    logits, caches = model.decode_dense(tokens, caches, kv_lens,
                                        implementation=self.implementation)
    return caches, jnp.argmax(logits, -1).astype(jnp.int32), logits

  # ------------------------------------------------------------------ host side

  def _prefill_args(self, admitted, cur, page_table):
    s = self.setup
    L = s.lanes
    slots = np.full(L, -1, np.int32)
    lens = np.zeros(L, np.int32)
    for i, r in enumerate(admitted):
      slots[i], lens[i] = r.slot, len(r.prompt)
    if self.mode == "dense":
      toks = np.zeros((L, s.prompt[1]), np.int32)
      for i, r in enumerate(admitted):
        toks[i, :len(r.prompt)] = r.prompt
      return (cur, toks, lens, slots)
    T = s.prefill_tokens
    toks = np.zeros(T, np.int32)
    pos = np.zeros(T, np.int32)
    lane_ids = np.full(T, -1, np.int32)
    offs = np.zeros(L + 1, np.int32)
    o = 0
    for i, r in enumerate(admitted):
      n = len(r.prompt)
      toks[o:o + n], pos[o:o + n], lane_ids[o:o + n] = r.prompt, np.arange(n), i
      o += n
      offs[i + 1:] = o
    return (cur, toks, pos, lane_ids, offs, slots, lens, page_table)

  def warmup(self):
    """Compile both steps (nothing is written: every lane and slot is idle)."""
    cur = jnp.zeros(self.B, jnp.int32)
    pt = np.zeros((self.B, self.max_pages), np.int32)
    self.caches, cur, _, _ = self._prefill(self.state, self.caches,
                                           *self._prefill_args([], cur, pt))
    if self.mode == "paged":
      hist = dict((op, dispatch.chosen(op)) for op in ("prefill", "append_kv"))
    kv = np.zeros(self.B, np.int32)
    args = (kv, pt) if self.mode == "paged" else (kv,)
    self.caches, nxt, _ = self._decode(self.state, self.caches, cur, *args)
    jax.block_until_ready(nxt)
    if self.mode == "paged":
      self.served = dict(hist, decode=dispatch.chosen("decode") + " (with plan_decode)")
    else:
      impl = self.implementation.partition(":")[2] or "xla"
      name = f"jax.nn.dot_product_attention ({impl}), dense cache"
      self.served = {"prefill": name, "decode": name, "append_kv": "scatter (.at[].set)"}
    return self

  def run(self, requests, *, max_steps: Optional[int] = None, record: bool = False,
          forced: Optional[list] = None, log=None, log_every: int = 1) -> tuple:
    """Serve `requests` until all finish or `max_steps` steps ran. `forced`: the decode
    inputs of a recorded run (teacher forcing). Returns (Stats, Trace or None)."""
    s, B = self.setup, self.B
    for r in requests:
      r.slot, r.pages, r.generated = -1, [], 0
      if len(r.prompt) > s.prompt[1] or r.max_new > s.gen[1]:
        raise ValueError(f"request {r.rid} exceeds the engine's max lengths")
    rng = np.random.default_rng(self.seed)
    free_pages = list(rng.permutation(self.num_pages))    # shuffled: pages are scattered
    slots: list = [None] * B
    page_table = np.zeros((B, self.max_pages), np.int32)
    incoming = collections.deque(sorted(requests, key=lambda r: r.arrival))
    queue: collections.deque = collections.deque()
    cur = jnp.zeros(B, jnp.int32)
    st = Stats()
    logit_parts = collections.defaultdict(list)
    token_parts = collections.defaultdict(list)
    decode_inputs = []
    clock = 0
    total = max_steps or len(requests)
    t_start = time.perf_counter()
    while (incoming or queue or any(slots)) and (max_steps is None or st.steps < max_steps):
      if not queue and not any(slots) and incoming[0].arrival > clock:
        clock = incoming[0].arrival             # idle: jump to the next arrival
      while incoming and incoming[0].arrival <= clock:
        queue.append(incoming.popleft())
      # admit (first come, first served) while a lane, a slot, tokens and pages are free
      admitted, budget = [], s.prefill_tokens
      while queue and len(admitted) < s.lanes and None in slots:
        r = queue[0]
        need = _cdiv(len(r.prompt) + r.max_new - 1, s.page_size)
        if len(r.prompt) > budget or need > len(free_pages):
          break
        queue.popleft()
        r.slot = slots.index(None)
        slots[r.slot] = r
        r.pages = [free_pages.pop() for _ in range(need)]
        page_table[r.slot] = 0
        page_table[r.slot, :need] = r.pages
        budget -= len(r.prompt)
        admitted.append(r)
      t0 = time.perf_counter()
      if admitted:
        self.caches, cur, nxt, logits = self._prefill(
            self.state, self.caches, *self._prefill_args(admitted, cur, page_table))
        jax.block_until_ready(cur)
        for i, r in enumerate(admitted):
          r.generated = 1
          token_parts[r.rid].append((nxt, i))
          if record:
            logit_parts[r.rid].append((logits, i))
        st.prompt_tokens += sum(len(r.prompt) for r in admitted)
        st.new_tokens += len(admitted)
      t1 = time.perf_counter()
      running = [r for r in slots if r is not None and r.generated < r.max_new]
      if running:
        kv = np.zeros(B, np.int32)
        for r in running:
          kv[r.slot] = len(r.prompt) + r.generated
        tokens = forced[len(decode_inputs)] if forced is not None else cur
        decode_inputs.append(tokens)
        args = (kv, page_table) if self.mode == "paged" else (kv,)
        self.caches, cur, logits = self._decode(self.state, self.caches, tokens, *args)
        jax.block_until_ready(cur)
        for r in running:
          r.generated += 1
          token_parts[r.rid].append((cur, r.slot))
          if record:
            logit_parts[r.rid].append((logits, r.slot))
        st.new_tokens += len(running)
        st.decode_tokens += len(running)
      t2 = time.perf_counter()
      if running:
        st.decode_steps.append((len(running), t2 - t1))
      st.prefill_s += t1 - t0
      st.decode_s += t2 - t1
      st.steps += 1
      clock += 1
      for i, r in enumerate(slots):
        if r is not None and r.generated >= r.max_new:
          free_pages.extend(r.pages)
          slots[i] = None
          st.finished += 1
      st.wall_s = time.perf_counter() - t_start
      if log is not None and (st.steps % log_every == 0 or st.steps == total):
        done = st.steps if max_steps else st.finished
        bar = "#" * int(24 * done / total)
        n = len(admitted) + len(running)
        log(f"  step {st.steps:4d} [{bar:<24}] running {len(running):3d}/{B}"
            f"  prefill {len(admitted)} req {sum(len(r.prompt) for r in admitted):5d} tok"
            f"  +{n:3d} tok {1e3 * (t2 - t0):8.2f} ms {n / (t2 - t0):10,.0f} tok/s"
            f" | total {st.new_tokens / st.wall_s:10,.0f} tok/s")
    trace = None
    if record:
      host = {}

      def get(a):
        if id(a) not in host:
          host[id(a)] = np.asarray(a)
        return host[id(a)]

      trace = Trace(
          logits={rid: np.stack([get(a)[i] for a, i in parts])
                  for rid, parts in logit_parts.items()},
          tokens={rid: np.asarray([get(a)[i] for a, i in parts], np.int32)
                  for rid, parts in token_parts.items()},
          decode_inputs=decode_inputs)
    return st, trace


# ---------------------------------------------------------------------- the check

def dense_logits(model: Llama, requests, trace: Trace, implementation=JAX_NN) -> dict:
  """Teacher forcing: the model run densely over prompt + generated[:-1] of every
  request; returns rid -> logits at the positions that produced its outputs."""
  reqs = [r for r in requests if r.rid in trace.tokens]
  seqs = [np.concatenate([r.prompt, trace.tokens[r.rid][:-1]]) for r in reqs]
  T = max(len(x) for x in seqs)
  toks = np.zeros((len(seqs), T), np.int32)
  for i, x in enumerate(seqs):
    toks[i, :len(x)] = x
  lens = np.asarray([len(x) for x in seqs], np.int32)
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda st, t, l: nnx.merge(graphdef, st)(t, l, implementation=implementation))
  out = np.asarray(fwd(state, toks, lens))
  return {r.rid: out[i, len(r.prompt) - 1:lens[i]] for i, r in enumerate(reqs)}


def check(model: Llama, engine: Engine, setup: Setup, seed: int, log=print) -> dict:
  """Run the check schedule; returns {what: max relative error}, plus "ok" and "tol"."""
  cfg = model.cfg
  reqs = make_requests(seed + 1, setup.check_requests, setup.check_prompt, setup.check_gen,
                       cfg.vocab_size, batch=max(1, setup.check_requests // 2))
  _, trace = engine.run(reqs, record=True)
  ref_engine = Engine(model, setup, implementation="xla", seed=engine.seed).warmup()
  _, ref = ref_engine.run(reqs, record=True, forced=trace.decode_inputs)
  del ref_engine
  dense = dense_logits(model, reqs, trace)
  tol = TOLERANCE[cfg.dtype]
  errs = {
      "same loop, every op on implementation='xla'":
          max(rel_err(trace.logits[r], ref.logits[r]) for r in trace.logits),
      "dense K/V on jax.nn.dot_product_attention":
          max(rel_err(trace.logits[r], dense[r]) for r in trace.logits),
  }
  n_tok = sum(len(v) for v in trace.tokens.values())
  log(f"check: {len(reqs)} requests, {n_tok} generated tokens, logits compared at every one "
      f"(tolerance {tol:g}, {cfg.dtype})")
  for what, e in errs.items():
    log(f"  max relative error vs {what}: {e:.2e}  {'OK' if e <= tol else 'FAIL'}")
  return dict(errs, ok=all(e <= tol for e in errs.values()), tol=tol)


# ---------------------------------------------------------------------- main

def _parse_impl(text: Optional[str]):
  """"NAME" (prefill and decode) or "op=NAME,op=NAME"."""
  if text is None:
    return None
  if "=" not in text:
    return {"prefill": text, "decode": text}
  return dict(part.split("=", 1) for part in text.split(","))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jattn.demo", description=__doc__.split("\n")[0])
  p.add_argument("--size", choices=sorted(SIZES), default="tiny")
  p.add_argument("--steps", type=int, default=None, help="timed scheduler steps")
  p.add_argument("--batch", type=int, default=None, help="decode slots")
  p.add_argument("--impl", default=None,
                 help="jattn implementation for prefill/decode: NAME or op=NAME,op=NAME")
  p.add_argument("--baseline-impl", default=JAX_NN, choices=[JAX_NN, JAX_NN + ":cudnn"],
                 help="the dense baseline: jax.nn.dot_product_attention (XLA) or cuDNN")
  p.add_argument("--no-baseline", action="store_true")
  p.add_argument("--no-check", action="store_true")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log-every", type=int, default=None)
  p.add_argument("--json", default=None, help="also write a summary of the run here")
  a = p.parse_args(argv)

  setup = SIZES[a.size]
  if a.batch:
    setup = dataclasses.replace(setup, batch=a.batch)
  steps = a.steps or setup.steps
  cfg = CONFIGS[setup.model]
  # The check compares float32 logits at 1e-3; a GPU's default float32 dot is TF32-class.
  with jax.default_matmul_precision("highest" if cfg.dtype == "float32" else None):
    return _serve(a, setup, steps, cfg)


def _serve(a, setup: Setup, steps: int, cfg) -> int:
  """Build the model, compile both loops, check, time; returns the exit status."""
  dev = jax.devices()[0]
  print(f"jattn demo: size {a.size} on {dev.platform} ({dev.device_kind}), jax {jax.__version__}")
  t = time.perf_counter()
  model = Llama.from_seed(cfg, a.seed)
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"model: Llama-style, {n_params / 1e6:,.1f} M params, {cfg.n_layers} layers, "
        f"dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads} (q/kv), head_dim "
        f"{cfg.head_dim}, {cfg.dtype}, random init seed {a.seed} "
        f"({time.perf_counter() - t:.1f} s)")
  print(f"serving: {setup.batch} slots, page_size {setup.page_size}, prompts "
        f"{setup.prompt[0]}-{setup.prompt[1]}, outputs {setup.gen[0]}-{setup.gen[1]} tokens, "
        f"prefill {setup.lanes} requests / {setup.prefill_tokens} tokens per step")

  t = time.perf_counter()
  engine = Engine(model, setup, implementation=_parse_impl(a.impl), seed=a.seed).warmup()
  print(f"compiled the jattn loop in {time.perf_counter() - t:.1f} s; implementations "
        "(jattn.dispatch.chosen):")
  for op in ATTN_OPS:
    print(f"  {op:10s} -> {engine.served[op]}")

  summary = dict(size=a.size, device=dev.device_kind, platform=dev.platform, steps=steps,
                 setup=dataclasses.asdict(setup), served=dict(engine.served))
  ok = True
  if not a.no_check:
    summary["check"] = check(model, engine, setup, a.seed)
    ok = summary["check"]["ok"]

  reqs = make_requests(a.seed, setup.batch + steps * setup.batch // 8 + 8, setup.prompt,
                       setup.gen, cfg.vocab_size, setup.batch)
  log_every = a.log_every or max(1, steps // 24)
  engine.run(reqs, max_steps=2)               # warm run, not timed
  print(f"timed run on jattn: {steps} steps")
  st, _ = engine.run(reqs, max_steps=steps, log=print, log_every=log_every)
  print(f"jattn:    {st.line()}")
  summary["jattn"] = _summary(st)
  rc = 0 if ok else 1
  if not a.no_baseline:
    del engine
    try:
      t = time.perf_counter()
      base = Engine(model, setup, mode="dense", implementation=a.baseline_impl,
                    seed=a.seed).warmup()
      print(f"compiled the baseline loop in {time.perf_counter() - t:.1f} s "
            f"({base.served['decode']})")
      base.run(reqs, max_steps=2)
      print(f"timed run on the baseline: {steps} steps")
      bst, _ = base.run(reqs, max_steps=steps, log=print, log_every=log_every)
    except Exception as e:  # noqa: BLE001  (report it, keep jattn's numbers, exit 2)
      print(f"baseline FAILED: {type(e).__name__}: {e}")
      summary["baseline"] = dict(error=f"{type(e).__name__}: {e}")
      rc = rc or 2
    else:
      print(f"baseline: {bst.line()}")
      summary["baseline"] = dict(_summary(bst), served=base.served["decode"])
      sp = (st.new_tokens / st.wall_s) / (bst.new_tokens / bst.wall_s)
      dsp = (st.decode_tokens / st.decode_s) / (bst.decode_tokens / bst.decode_s)
      summary["speedup"] = dict(total=sp, decode=dsp)
      print(f"speed-up of jattn over the baseline: {sp:.2f}x total, {dsp:.2f}x decode "
            f"(same requests, same schedule, {dev.device_kind})")
      if dev.platform == "cpu":
        print("  (on CPU both loops run XLA attention on a tiny model: a smoke test, not a "
              "benchmark; run --size 1b on a GPU for speed)")
  print("check " + ("passed" if ok else "FAILED") if not a.no_check else "check skipped")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(summary, f, indent=1)
  return rc


def _summary(st: Stats) -> dict:
  rate = lambda n, s: n / s if s > 0 else None
  return dict(tokens=st.new_tokens, wall_s=st.wall_s, tok_s=rate(st.new_tokens, st.wall_s),
              decode_tok_s=rate(st.decode_tokens, st.decode_s),
              prefill_tok_s=rate(st.prompt_tokens, st.prefill_s), finished=st.finished,
              steps=st.steps)


if __name__ == "__main__":
  sys.exit(main())
