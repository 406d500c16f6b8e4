"""Definitions (an op's contract and reference) and workloads (its concrete shapes).

A `Definition` is one dispatcher op: its inputs and outputs, the reference that defines
it (`jattn.reference`), its tolerances, how to draw fresh random inputs for a `Workload`,
how to call it through the public API (so that a solution runs exactly where serving
code would call it) and how to cut a large call into cheap reference checks.

A `Workload` is JSON: the shapes, dtype, mask and per-sequence lengths of one call.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jattn import api, dispatch, reference
from jattn.cache import PagedKVCache

# Relative error ||x - ref|| / ||ref|| allowed against the float32 reference, by the
# solution's input dtype (tests/conftest.py uses the same figures against float64).
TOLERANCE = {"bfloat16": 1.5e-2, "float16": 3e-3, "float32": 2e-3}
# A reference above this many bytes of float32 intermediates is checked on slices (one
# sequence and one kv head with its query heads) instead of whole.
CHECK_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class Workload:
  """Concrete shapes of one call. `q_len`: attention T, packed ops the new tokens per
  sequence (the maximum when `q_lens` is given), decode 1. `kv_len`: keys per sequence
  (the maximum when `kv_lens` is given). Paged ops (decode, prefill) need `page_size`."""

  definition: str
  batch: int
  num_q_heads: int
  num_kv_heads: int
  head_dim: int
  q_len: int
  kv_len: int
  v_head_dim: Optional[int] = None
  q_lens: Optional[tuple] = None
  kv_lens: Optional[tuple] = None
  dtype: str = "bfloat16"
  causal: bool = True
  window: Optional[int] = None
  soft_cap: Optional[float] = None
  page_size: Optional[int] = None
  name: str = ""

  def __post_init__(self):
    for f in ("q_lens", "kv_lens"):
      x = getattr(self, f)
      if x is not None:
        object.__setattr__(self, f, tuple(int(n) for n in x))

  @property
  def dv(self) -> int:
    return self.v_head_dim or self.head_dim

  @property
  def group(self) -> int:
    return self.num_q_heads // self.num_kv_heads

  @property
  def sm_scale(self) -> float:
    return 1.0 / math.sqrt(self.head_dim)

  def lens(self) -> tuple[np.ndarray, np.ndarray]:
    """(q_lens, kv_lens) int32 [B]."""
    q = self.q_lens if self.q_lens is not None else (self.q_len,) * self.batch
    kv = self.kv_lens if self.kv_lens is not None else (self.kv_len,) * self.batch
    return np.asarray(q, np.int32), np.asarray(kv, np.int32)

  def to_json(self) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items() if v is not None}

  @classmethod
  def from_json(cls, d: dict) -> "Workload":
    return cls(**d)


def load_workloads(path: str) -> list[Workload]:
  """A JSON list of workloads (or JSON lines, one per line)."""
  with open(path) as f:
    text = f.read()
  items = json.loads(text) if text.lstrip().startswith("[") else [
      json.loads(line) for line in text.splitlines() if line.strip()]
  return [Workload.from_json(d) for d in items]


def shuffled_page_table(kv_lens, max_len: int, page_size: int, seed: int = 1):
  """Page table int32 [B, ceil(max_len / page_size)] (numpy) and the page count P.
  Sequence b's first ceil(len_b / page_size) entries are its own pages, in a random
  order over the cache; the rest of its row points at random (valid) pages that must
  not be read."""
  lens = np.asarray(kv_lens)
  m = -(-max_len // page_size)
  used = -(-lens // page_size)
  num_pages = max(int(used.sum()), 1)
  rng = np.random.default_rng(seed)
  perm = rng.permutation(num_pages)
  table = rng.integers(0, num_pages, (len(lens), m)).astype(np.int32)
  start = 0
  for b, u in enumerate(used):
    table[b, :u] = perm[start:start + u]
    start += u
  return table, num_pages


def _key(seed: int, part: int = 0):
  return jax.random.fold_in(jax.random.key(seed, impl="rbg"), part)   # rbg: quick to compile


def _normal(key, shape, dtype):
  return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _offsets(lens) -> np.ndarray:
  return np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)


def _f32(x):
  if isinstance(x, PagedKVCache):
    return PagedKVCache(_f32(x.k_pages), _f32(x.v_pages))
  if jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.float32)
  return x


def rel_err(x, ref) -> float:
  """||x - ref|| / ||ref|| over the reference's finite entries; NaN in x, or a finite
  pattern that differs from the reference's, gives inf."""
  x = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
  ref = np.asarray(ref, np.float64)
  if x.shape != ref.shape or np.isnan(x).any():
    return float("inf")
  fin = np.isfinite(ref)
  if not np.array_equal(np.isfinite(x), fin):
    return float("inf")
  num = np.linalg.norm((x - ref)[fin])
  den = np.linalg.norm(ref[fin])
  return float(num / den) if den > 0 else float(num)


def lse_err(x, ref) -> float:
  """Max |lse - ref| over finite entries; inf when the -inf rows differ or x has NaN."""
  x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
  if x.shape != ref.shape or np.isnan(x).any():
    return float("inf")
  if not np.array_equal(np.isneginf(x), np.isneginf(ref)):
    return float("inf")
  fin = np.isfinite(ref)
  return float(np.max(np.abs(x[fin] - ref[fin]))) if fin.any() else 0.0


class Definition:
  """An op's contract. Subclasses fill `make`, `call`, `ref`, `restrict`, `take`."""

  name: str = ""
  inputs: dict = {}
  outputs: dict = {}
  reference: Callable = None

  def tolerance(self, wl: Workload) -> float:
    return TOLERANCE[wl.dtype]

  def variant(self, wl: Workload):
    return api.build_variant(self.name, wl.causal, wl.window, wl.soft_cap)

  # -- to fill
  def make(self, wl: Workload, seed: int) -> dict:
    """Random inputs (a dict of arrays) for `wl`, drawn from `seed`."""
    raise NotImplementedError

  def call(self, wl: Workload, a: dict, implementation: Optional[str] = None):
    """The public op on `a`; returns (out, lse)."""
    raise NotImplementedError

  def ref(self, wl: Workload, a: dict):
    """`self.reference` on `a` upcast to float32; returns (out, lse)."""
    raise NotImplementedError

  def restrict(self, wl: Workload, a: dict, b: int, h: int) -> tuple[Workload, dict]:
    """The sub-problem of sequence b and kv head h (with its query heads)."""
    raise NotImplementedError

  def take(self, wl: Workload, out, lse, b: int, h: int):
    """The part of a full (out, lse) that `restrict(wl, a, b, h)` computes."""
    raise NotImplementedError

  def ref_bytes(self, wl: Workload) -> int:
    """Float32 bytes of the reference's largest intermediate (logits or gathered K/V)."""
    raise NotImplementedError

  # -- shared
  def spec(self, wl: Workload) -> dispatch.Spec:
    """The `dispatch.Spec` that `jattn.<op>` builds for `wl` (traced, nothing runs)."""
    return _spec(self, wl)

  def slices(self, wl: Workload) -> list[tuple[int, int]]:
    """Where a large call is checked: (sequence, kv head) pairs, first, last, longest."""
    _, kv = wl.lens()
    return sorted({(0, 0), (wl.batch - 1, wl.num_kv_heads - 1),
                   (int(np.argmax(kv)), wl.num_kv_heads // 2)})

  def check(self, wl: Workload, a: dict, out, lse) -> tuple[float, float]:
    """(relative error of out, max abs error of lse) against the reference, on the whole
    call when it is small and on `slices` otherwise."""
    parts = [None] if self.ref_bytes(wl) <= CHECK_BYTES else self.slices(wl)
    err = l_err = 0.0
    for part in parts:
      if part is None:
        sub, sa, o, l = wl, a, out, lse
      else:
        (sub, sa), (o, l) = self.restrict(wl, a, *part), self.take(wl, out, lse, *part)
      # The reference reads lengths from the arrays: one compile per shape, not per length.
      ro, rl = _jitted_ref(self, dataclasses.replace(sub, q_lens=None, kv_lens=None, name=""))(sa)
      err, l_err = max(err, rel_err(o, ro)), max(l_err, lse_err(l, rl))
    return err, l_err

  def __repr__(self):
    return f"Definition({self.name}: {self.inputs} -> {self.outputs})"


@functools.lru_cache(maxsize=64)
def _jitted_ref(defn: Definition, wl: Workload):
  return jax.jit(functools.partial(defn.ref, wl))


def _spec(defn: Definition, wl: Workload) -> dispatch.Spec:
  seen = []

  def record(spec):
    if spec.op == defn.name:
      seen.append(spec)
    return None

  abstract = jax.eval_shape(lambda: defn.make(wl, 0))
  with dispatch.override(record):
    jax.eval_shape(lambda a: defn.call(wl, a), abstract)
  return seen[0]


def _heads(x, axis, h, g):
  return jax.lax.slice_in_dim(x, h * g, (h + 1) * g, axis=axis)


def _cache_head(cache: PagedKVCache, h: int) -> PagedKVCache:
  return PagedKVCache(cache.k_pages[:, :, h:h + 1], cache.v_pages[:, :, h:h + 1])


class Attention(Definition):
  name = "attention"
  inputs = {"q": "[B,T,Nq,D]", "k": "[B,S,Nkv,D]", "v": "[B,S,Nkv,Dv]",
            "q_lengths": "int32 [B] (optional)", "kv_lengths": "int32 [B] (optional)"}
  outputs = {"out": "[B,T,Nq,Dv]", "lse": "float32 [B,T,Nq]"}
  reference = staticmethod(reference.attention)

  def make(self, wl, seed):
    kq, kk, kv = _key(seed, 1), _key(seed, 2), _key(seed, 3)
    dt = jnp.dtype(wl.dtype)
    a = dict(q=_normal(kq, (wl.batch, wl.q_len, wl.num_q_heads, wl.head_dim), dt),
             k=_normal(kk, (wl.batch, wl.kv_len, wl.num_kv_heads, wl.head_dim), dt),
             v=_normal(kv, (wl.batch, wl.kv_len, wl.num_kv_heads, wl.dv), dt))
    q_lens, kv_lens = wl.lens()
    if wl.q_lens is not None:
      a["q_lengths"] = jnp.asarray(q_lens)
    if wl.kv_lens is not None:
      a["kv_lengths"] = jnp.asarray(kv_lens)
    return a

  def call(self, wl, a, implementation=None):
    return api.attention(a["q"], a["k"], a["v"], causal=wl.causal, sliding_window=wl.window,
                         logits_soft_cap=wl.soft_cap, q_lengths=a.get("q_lengths"),
                         kv_lengths=a.get("kv_lengths"), return_lse=True,
                         implementation=implementation)

  def ref(self, wl, a):
    return reference.attention(_f32(a["q"]), _f32(a["k"]), _f32(a["v"]), sm_scale=wl.sm_scale,
                               variant=self.variant(wl), q_lengths=a.get("q_lengths"),
                               kv_lengths=a.get("kv_lengths"))

  def restrict(self, wl, a, b, h):
    g = wl.group
    sub = dict(q=_heads(a["q"][b:b + 1], 2, h, g), k=a["k"][b:b + 1, :, h:h + 1],
               v=a["v"][b:b + 1, :, h:h + 1])
    for n in ("q_lengths", "kv_lengths"):
      if n in a:
        sub[n] = a[n][b:b + 1]
    pick = lambda x: None if x is None else (x[b],)
    return dataclasses.replace(wl, batch=1, num_q_heads=g, num_kv_heads=1,
                               q_lens=pick(wl.q_lens), kv_lens=pick(wl.kv_lens)), sub

  def take(self, wl, out, lse, b, h):
    return _heads(out[b:b + 1], 2, h, wl.group), _heads(lse[b:b + 1], 2, h, wl.group)

  def ref_bytes(self, wl):
    return 4 * wl.batch * wl.num_q_heads * wl.q_len * wl.kv_len


class _Paged(Definition):
  """Shared by the paged ops: a shuffled page table with junk in the unused entries."""

  def pages(self, wl, seed):
    _, kv_lens = wl.lens()
    table, num_pages = shuffled_page_table(kv_lens, wl.kv_len, wl.page_size, seed=seed)
    kk, kv = _key(seed, 2), _key(seed, 3)
    dt = jnp.dtype(wl.dtype)
    shape = (num_pages, wl.page_size, wl.num_kv_heads)
    cache = PagedKVCache(_normal(kk, shape + (wl.head_dim,), dt), _normal(kv, shape + (wl.dv,), dt))
    return dict(cache=cache, page_table=jnp.asarray(table), kv_lens=jnp.asarray(kv_lens))

  def ref_bytes(self, wl):
    m = -(-wl.kv_len // wl.page_size) * wl.page_size
    gathered = 4 * wl.batch * m * wl.num_kv_heads * (wl.head_dim + wl.dv)
    rows = wl.batch if self.name == "decode" else int(wl.lens()[0].sum())
    keys = m if self.name == "decode" else wl.batch * m
    return max(gathered, 4 * wl.num_q_heads * rows * keys)


class Decode(_Paged):
  name = "decode"
  inputs = {"q": "[B,Nq,D]", "cache": "PagedKVCache [P,page_size,Nkv,D|Dv]",
            "page_table": "int32 [B,max_pages]", "kv_lens": "int32 [B]"}
  outputs = {"out": "[B,Nq,Dv]", "lse": "float32 [B,Nq]"}
  reference = staticmethod(reference.decode)

  def variant(self, wl):
    return api.build_variant(self.name, False, wl.window, wl.soft_cap)

  def make(self, wl, seed):
    a = self.pages(wl, seed)
    a["q"] = _normal(_key(seed, 1), (wl.batch, wl.num_q_heads, wl.head_dim), jnp.dtype(wl.dtype))
    return a

  def call(self, wl, a, implementation=None):
    return api.decode(a["q"], a["cache"], a["page_table"], a["kv_lens"],
                      sliding_window=wl.window, logits_soft_cap=wl.soft_cap, return_lse=True,
                      implementation=implementation)

  def ref(self, wl, a):
    return reference.decode(_f32(a["q"]), _f32(a["cache"]), a["page_table"], a["kv_lens"],
                            sm_scale=wl.sm_scale, variant=self.variant(wl))

  def restrict(self, wl, a, b, h):
    sub = dict(q=_heads(a["q"][b:b + 1], 1, h, wl.group), cache=_cache_head(a["cache"], h),
               page_table=a["page_table"][b:b + 1], kv_lens=a["kv_lens"][b:b + 1])
    return dataclasses.replace(wl, batch=1, num_q_heads=wl.group, num_kv_heads=1,
                               kv_lens=(int(wl.lens()[1][b]),)), sub

  def take(self, wl, out, lse, b, h):
    return _heads(out[b:b + 1], 1, h, wl.group), _heads(lse[b:b + 1], 1, h, wl.group)


class Prefill(_Paged):
  name = "prefill"
  inputs = {"q": "[Tq,Nq,D] packed", "cache": "PagedKVCache [P,page_size,Nkv,D|Dv]",
            "page_table": "int32 [B,max_pages]", "kv_lens": "int32 [B]",
            "q_offsets": "int32 [B+1]"}
  outputs = {"out": "[Tq,Nq,Dv]", "lse": "float32 [Tq,Nq]"}
  reference = staticmethod(reference.prefill)

  def make(self, wl, seed):
    a = self.pages(wl, seed)
    q_lens, _ = wl.lens()
    a["q"] = _normal(_key(seed, 1), (int(q_lens.sum()), wl.num_q_heads, wl.head_dim),
                     jnp.dtype(wl.dtype))
    a["q_offsets"] = jnp.asarray(_offsets(q_lens))
    return a

  def call(self, wl, a, implementation=None):
    return api.prefill(a["q"], a["cache"], a["page_table"], a["kv_lens"], a["q_offsets"],
                       causal=wl.causal, sliding_window=wl.window, logits_soft_cap=wl.soft_cap,
                       return_lse=True, implementation=implementation)

  def ref(self, wl, a):
    return reference.prefill(_f32(a["q"]), _f32(a["cache"]), a["page_table"], a["kv_lens"],
                             a["q_offsets"], sm_scale=wl.sm_scale, variant=self.variant(wl))

  def restrict(self, wl, a, b, h):
    q_lens, kv_lens = wl.lens()
    r0, r1 = (int(x) for x in _offsets(q_lens)[b:b + 2])
    sub = dict(q=_heads(a["q"][r0:r1], 1, h, wl.group), cache=_cache_head(a["cache"], h),
               page_table=a["page_table"][b:b + 1], kv_lens=a["kv_lens"][b:b + 1],
               q_offsets=jnp.asarray([0, r1 - r0], jnp.int32))
    return dataclasses.replace(wl, batch=1, num_q_heads=wl.group, num_kv_heads=1,
                               q_lens=(r1 - r0,), kv_lens=(int(kv_lens[b]),)), sub

  def take(self, wl, out, lse, b, h):
    r0, r1 = (int(x) for x in _offsets(wl.lens()[0])[b:b + 2])
    return _heads(out[r0:r1], 1, h, wl.group), _heads(lse[r0:r1], 1, h, wl.group)


class PrefillRagged(Definition):
  name = "prefill_ragged"
  inputs = {"q": "[Tq,Nq,D] packed", "k": "[Tk,Nkv,D] packed", "v": "[Tk,Nkv,Dv] packed",
            "q_offsets": "int32 [B+1]", "kv_offsets": "int32 [B+1]"}
  outputs = {"out": "[Tq,Nq,Dv]", "lse": "float32 [Tq,Nq]"}
  reference = staticmethod(reference.prefill_ragged)

  def make(self, wl, seed):
    kq, kk, kv = _key(seed, 1), _key(seed, 2), _key(seed, 3)
    q_lens, kv_lens = wl.lens()
    dt = jnp.dtype(wl.dtype)
    tk = int(kv_lens.sum())
    return dict(q=_normal(kq, (int(q_lens.sum()), wl.num_q_heads, wl.head_dim), dt),
                k=_normal(kk, (tk, wl.num_kv_heads, wl.head_dim), dt),
                v=_normal(kv, (tk, wl.num_kv_heads, wl.dv), dt),
                q_offsets=jnp.asarray(_offsets(q_lens)), kv_offsets=jnp.asarray(_offsets(kv_lens)))

  def call(self, wl, a, implementation=None):
    return api.prefill_ragged(a["q"], a["k"], a["v"], a["q_offsets"], a["kv_offsets"],
                              causal=wl.causal, sliding_window=wl.window,
                              logits_soft_cap=wl.soft_cap, return_lse=True,
                              implementation=implementation)

  def ref(self, wl, a):
    return reference.prefill_ragged(_f32(a["q"]), _f32(a["k"]), _f32(a["v"]), a["q_offsets"],
                                    a["kv_offsets"], sm_scale=wl.sm_scale,
                                    variant=self.variant(wl))

  def restrict(self, wl, a, b, h):
    q_lens, kv_lens = wl.lens()
    r0, r1 = (int(x) for x in _offsets(q_lens)[b:b + 2])
    k0, k1 = (int(x) for x in _offsets(kv_lens)[b:b + 2])
    sub = dict(q=_heads(a["q"][r0:r1], 1, h, wl.group), k=a["k"][k0:k1, h:h + 1],
               v=a["v"][k0:k1, h:h + 1], q_offsets=jnp.asarray([0, r1 - r0], jnp.int32),
               kv_offsets=jnp.asarray([0, k1 - k0], jnp.int32))
    return dataclasses.replace(wl, batch=1, num_q_heads=wl.group, num_kv_heads=1,
                               q_lens=(r1 - r0,), kv_lens=(k1 - k0,)), sub

  def take(self, wl, out, lse, b, h):
    r0, r1 = (int(x) for x in _offsets(wl.lens()[0])[b:b + 2])
    return _heads(out[r0:r1], 1, h, wl.group), _heads(lse[r0:r1], 1, h, wl.group)

  def ref_bytes(self, wl):
    q_lens, kv_lens = wl.lens()
    return 4 * wl.num_q_heads * int(q_lens.sum()) * int(kv_lens.sum())


DEFINITIONS: dict[str, Definition] = {d.name: d for d in (Attention(), Decode(), Prefill(),
                                                          PrefillRagged())}


def definition(name: str) -> Definition:
  try:
    return DEFINITIONS[name]
  except KeyError:
    raise KeyError(f"no definition {name!r}; known: {sorted(DEFINITIONS)}") from None


def input_bytes(a: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(a))
