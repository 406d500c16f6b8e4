"""The public ops. Each validates its inputs at trace time, folds the keyword shorthands
(causal, sliding_window, logits_soft_cap) into one `Variant`, asks the dispatcher for an
implementation and calls it. The math of every op is in `jattn.reference`.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import jax.numpy as jnp
import numpy as np

from jattn import dispatch, registry  # noqa: F401  (registry fills the dispatcher's table)
from jattn import sharding
from jattn import variants as V
from jattn.cache import FLOAT8_DTYPES, PagedKVCache, is_float8, page_dtype_error
from jattn.plan import DecodePlan

FLOAT_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64)
Window = Union[int, tuple[int, int], None]


# ----------------------------------------------------------------------------- checks

def _fail(op, msg):
  raise ValueError(f"jattn.{op}: {msg}")


def _rank(op, name, x, rank, layout):
  if np.ndim(x) != rank:       # numpy's ndim/shape also read lists (and tracers' .shape)
    _fail(op, f"{name} must have rank {rank} {layout}, got shape {np.shape(x)}")


def _int32(op, name, x, shape=None):
  """x as an int32 array (a list or numpy array is converted; other dtypes refused)."""
  x = jnp.asarray(x)
  if x.dtype != jnp.int32:
    raise TypeError(f"jattn.{op}: {name} must be int32, got {x.dtype}")
  if shape is not None and tuple(x.shape) != tuple(shape):
    _fail(op, f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
  return x


def _float(op, name, x, allowed=FLOAT_DTYPES):
  if not any(x.dtype == jnp.dtype(d) for d in allowed):
    raise TypeError(f"jattn.{op}: {name} dtype {x.dtype} not supported; "
                    f"use one of {[jnp.dtype(d).name for d in allowed]}")


def _heads(op, nq, nkv):
  if nkv == 0 or nq % nkv:
    _fail(op, f"number of query heads ({nq}) must be a multiple of kv heads ({nkv})")


def _cache(op, cache):
  if not isinstance(cache, PagedKVCache):
    raise TypeError(f"jattn.{op}: cache must be a jattn.PagedKVCache, got {type(cache)}")
  _rank(op, "cache.k_pages", cache.k_pages, 4, "[P, page_size, Nkv, D]")
  _rank(op, "cache.v_pages", cache.v_pages, 4, "[P, page_size, Nkv, Dv]")
  if cache.k_pages.shape[:3] != cache.v_pages.shape[:3]:
    _fail(op, f"cache.k_pages {cache.k_pages.shape} and cache.v_pages "
              f"{cache.v_pages.shape} disagree on [P, page_size, Nkv]")
  for name, pages in (("k_pages", cache.k_pages), ("v_pages", cache.v_pages)):
    why = page_dtype_error(f"jattn.{op}: cache.{name}", pages.dtype)
    if why is not None:
      raise TypeError(why)
  if not (is_float8(cache.k_pages.dtype) or is_float8(cache.v_pages.dtype)):
    if cache.k_scale is not None or cache.v_scale is not None:
      _fail(op, f"cache scales apply to float8 pages only; these are {cache.k_pages.dtype} "
                "(drop k_scale / v_scale)")
  else:
    if cache.k_scale is None or cache.v_scale is None:
      raise TypeError(f"jattn.{op}: float8 pages need cache.k_scale and cache.v_scale "
                      "(float32 [Nkv]); build the cache with PagedKVCache.create")
    for name, s in (("k_scale", cache.k_scale), ("v_scale", cache.v_scale)):
      if jnp.shape(s) != (cache.num_kv_heads,):
        _fail(op, f"cache.{name} must have shape [Nkv]=({cache.num_kv_heads},), "
                  f"got {jnp.shape(s)}")


def _page_table(op, page_table, batch):
  _rank(op, "page_table", page_table, 2, "[B, max_pages]")
  page_table = _int32(op, "page_table", page_table)
  if page_table.shape[0] != batch:
    _fail(op, f"page_table has {page_table.shape[0]} rows, expected batch {batch}")
  return page_table


def build_variant(op, causal=False, sliding_window: Window = None,
                  logits_soft_cap: Optional[float] = None,
                  variant: Optional[V.Variant] = None) -> V.Variant:
  """The one Variant an implementation sees: mask band, soft-cap, then the user's."""
  parts = []
  if causal:
    parts.append(V.causal())
  if sliding_window is not None:
    integral = lambda x: isinstance(x, numbers.Integral) and not isinstance(x, bool)
    if integral(sliding_window):
      left, right = int(sliding_window), 0
    elif (isinstance(sliding_window, (tuple, list)) and len(sliding_window) == 2
          and all(integral(x) for x in sliding_window)):
      left, right = (int(x) for x in sliding_window)
    else:
      _fail(op, f"sliding_window must be an int or a (left, right) pair of ints, got "
                f"{sliding_window!r}")
    parts.append(V.sliding_window(left, right))
  if logits_soft_cap is not None:
    parts.append(V.soft_cap(logits_soft_cap))
  if variant is not None:
    if not isinstance(variant, V.Variant):
      raise TypeError(f"jattn.{op}: variant must be a jattn.Variant, got {type(variant)}")
    parts.append(variant)
  return V.compose(*parts) if parts else V.Variant(name="identity")


def _check_params(op, variant, nq):
  for k, p in variant.params.items():
    if jnp.shape(p) != (nq,):
      _fail(op, f"variant params[{k!r}] must have shape [Nq]=({nq},), got {jnp.shape(p)}")


def _scale(sm_scale, d):
  return 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)


def _run(spec, implementation, *args, **kw):
  # Sharded inputs run once per shard (jattn.sharding); the dispatcher sees local shapes.
  return sharding.run(spec, implementation, args, kw, _run_local)


def _run_local(spec, implementation, *args, **kw):
  choice = dispatch.select(spec, implementation)
  return choice.fn(*args, interpret=choice.interpret, **kw)


def _ret(out, lse, return_lse):
  return (out, lse) if return_lse else out


# ----------------------------------------------------------------------------- ops

def attention(q, k, v, *, causal: bool = False, sm_scale: Optional[float] = None,
              variant: Optional[V.Variant] = None, sliding_window: Window = None,
              logits_soft_cap: Optional[float] = None, q_lengths=None, kv_lengths=None,
              return_lse: bool = False, implementation: Optional[str] = None,
              q_scale=None, k_scale=None, v_scale=None):
  """Dense attention, BTNH layout.

  q [B,T,Nq,D], k [B,S,Nkv,D], v [B,S,Nkv,Dv] -> [B,T,Nq,Dv] (q's dtype), and with
  `return_lse` also lse [B,T,Nq] float32. Causal is bottom-right aligned: query t sees
  key s iff s <= t + (kv_len - q_len). `q_lengths`/`kv_lengths` (int32 [B]) are valid
  prefix lengths; rows past q_len and rows that see no key return 0 (lse -inf).
  `sliding_window=w` keeps keys q_pos - w <= s <= q_pos (w + 1 keys, the query's own
  included; an int also means right = 0 without `causal`); `(left, right)` is a
  two-sided band. Unlike `jax.nn.dot_product_attention`'s `local_window_size`, an int is
  one-sided.

  float8 (e4m3fn / e5m2) q, k, v take float32 scales `q_scale` ([Nq] or scalar),
  `k_scale`, `v_scale` ([Nkv] or scalar; default 1): the real value is stored * scale.
  The output is then bfloat16 (see `_fp8_scales`).

  >>> o = jattn.attention(q, k, v, causal=True)
  """
  op = "attention"
  _rank(op, "q", q, 4, "[B, T, Nq, D]")
  _rank(op, "k", k, 4, "[B, S, Nkv, D]")
  _rank(op, "v", v, 4, "[B, S, Nkv, Dv]")
  for name, x in (("q", q), ("k", k), ("v", v)):
    _float(op, name, x, FLOAT_DTYPES + FLOAT8_DTYPES)
  if k.dtype != v.dtype:
    raise TypeError(f"jattn.{op}: k ({k.dtype}) and v ({v.dtype}) must share a dtype")
  B, T, Nq, D = q.shape
  _, S, Nkv, Dk = k.shape
  fp8_kw = _fp8_scales(op, q, k, v, q_scale, k_scale, v_scale)
  if k.shape[0] != B or v.shape[0] != B:
    _fail(op, f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
  if Dk != D:
    _fail(op, f"q head_dim {D} != k head_dim {Dk}")
  if v.shape[1:3] != (S, Nkv):
    _fail(op, f"v shape {v.shape} must match k's [B, S, Nkv] = {k.shape[:3]}")
  _heads(op, Nq, Nkv)
  if q_lengths is not None:
    q_lengths = _int32(op, "q_lengths", q_lengths, (B,))
  if kv_lengths is not None:
    kv_lengths = _int32(op, "kv_lengths", kv_lengths, (B,))
  var = build_variant(op, causal, sliding_window, logits_soft_cap, variant)
  _check_params(op, var, Nq)
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=q.dtype,
                       kv_dtype=k.dtype, head_dim=D, v_head_dim=v.shape[3], num_q_heads=Nq,
                       num_kv_heads=Nkv, variant=var, q_len=T, kv_len=S, batch=B,
                       extra=(("has_lengths", q_lengths is not None or kv_lengths is not None),))
  out, lse = _run(spec, implementation, q, k, v, sm_scale=_scale(sm_scale, D), variant=var,
                  q_lengths=q_lengths, kv_lengths=kv_lengths, **fp8_kw)
  return _ret(out, lse, return_lse)


def _fp8_scales(op, q, k, v, q_scale, k_scale, v_scale) -> dict:
  """For float8 q/k/v: the scales as float32 [Nq], [Nkv], [Nkv] keyword arguments (the
  "cuda_fp8" and "xla_fp8" implementations take them; other implementations reject
  float8 specs). Non-float8 inputs take no scales: {}."""
  if not any(is_float8(x.dtype) for x in (q, k, v)):
    for name, s in (("q_scale", q_scale), ("k_scale", k_scale), ("v_scale", v_scale)):
      if s is not None:
        _fail(op, f"{name} is only for float8 inputs")
    return {}
  out = {}
  for name, s, n in (("q_scale", q_scale, q.shape[2]), ("k_scale", k_scale, k.shape[2]),
                     ("v_scale", v_scale, v.shape[2])):
    s = jnp.asarray(1.0 if s is None else s, jnp.float32)
    if s.size == 1:
      s = jnp.broadcast_to(s.reshape(()), (n,))
    if s.shape != (n,):
      _fail(op, f"{name} must be a scalar or have shape [{n}], got {s.shape}")
    out[name] = s
  return out


def decode(q, cache: PagedKVCache, page_table, kv_lens, *, sm_scale: Optional[float] = None,
           variant: Optional[V.Variant] = None, sliding_window: Window = None,
           logits_soft_cap: Optional[float] = None, return_lse: bool = False, plan=None,
           implementation: Optional[str] = None):
  """One new query per sequence against the paged cache.

  q [B,Nq,D]; sequence b's kv_lens[b] tokens (the query's own already appended) are read
  through page_table [B, max_pages] (int32). Output [B,Nq,Dv]. The query sits at position
  kv_lens[b] - 1, so decode is causal by construction. kv_lens are clipped to
  [0, max_pages * page_size] and page ids to [0, P): reads never leave the cache.
  `plan` (from `jattn.plan_decode`) lets kernels balance skewed lengths across SMs.

  >>> o = jattn.decode(q, cache, page_table, kv_lens)
  """
  op = "decode"
  _rank(op, "q", q, 3, "[B, Nq, D]")
  _float(op, "q", q, FLOAT_DTYPES)
  _cache(op, cache)
  B, Nq, D = q.shape
  page_table = _page_table(op, page_table, B)
  kv_lens = _int32(op, "kv_lens", kv_lens, (B,))
  if cache.head_dim != D:
    _fail(op, f"q head_dim {D} != cache head_dim {cache.head_dim}")
  _heads(op, Nq, cache.num_kv_heads)
  if plan is not None:
    if not isinstance(plan, DecodePlan):
      raise TypeError(f"jattn.{op}: plan must be a jattn.DecodePlan (jattn.plan_decode), "
                      f"got {type(plan).__name__}")
    if tuple(plan.batch_units.shape) != (B + 1,):
      _fail(op, f"plan was made for {plan.batch_units.shape[0] - 1} sequences, the call "
                f"has B = {B}; make it from this step's kv_lens")
  var = build_variant(op, False, sliding_window, logits_soft_cap, variant)
  _check_params(op, var, Nq)
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=q.dtype,
                       kv_dtype=cache.dtype, head_dim=D, v_head_dim=cache.v_head_dim,
                       num_q_heads=Nq, num_kv_heads=cache.num_kv_heads, variant=var,
                       page_size=cache.page_size, q_len=1,
                       kv_len=page_table.shape[1] * cache.page_size, batch=B,
                       extra=(("plan", plan is not None),))
  out, lse = _run(spec, implementation, q, cache, page_table, kv_lens,
                  sm_scale=_scale(sm_scale, D), variant=var, plan=plan)
  return _ret(out, lse, return_lse)


def _offsets(op, name, x, batch=None, rows=None):
  """int32 [B + 1] offsets; values are checked when they are on the host (numpy or a
  list): from 0, not decreasing, at most `rows` (traced values cannot be checked)."""
  _rank(op, name, x, 1, "[B + 1]")
  if isinstance(x, (list, tuple, np.ndarray)):
    v = np.asarray(x)
    if v.size and (v[0] != 0 or np.any(np.diff(v) < 0) or (rows is not None and v[-1] > rows)):
      _fail(op, f"{name} must start at 0, never decrease and end at most at {rows} rows, "
                f"got {v.tolist()}")
  x = _int32(op, name, x)
  if batch is not None and x.shape[0] != batch + 1:
    _fail(op, f"{name} must have B + 1 = {batch + 1} entries, got {x.shape[0]}")
  return x


def prefill(q, cache: PagedKVCache, page_table, kv_lens, q_offsets, *, causal: bool = True,
            sm_scale: Optional[float] = None, variant: Optional[V.Variant] = None,
            sliding_window: Window = None, logits_soft_cap: Optional[float] = None,
            return_lse: bool = False, implementation: Optional[str] = None):
  """Packed queries against the paged cache (prefill and append).

  q [Tq,Nq,D]; sequence b owns rows q_offsets[b]:q_offsets[b+1] (int32 [B+1], from 0,
  never decreasing, at most Tq; checked when given as numpy), and they are the LAST
  tokens of its kv_lens[b] cached tokens, so q_len_b <= kv_lens[b] (append semantics; a
  plain prefill has q_len == kv_len). Rows past q_offsets[B] are padding and return 0.

  >>> o = jattn.prefill(q, cache, page_table, kv_lens, q_offsets)
  """
  op = "prefill"
  _rank(op, "q", q, 3, "[Tq, Nq, D]")
  _float(op, "q", q, FLOAT_DTYPES)
  _cache(op, cache)
  q_offsets = _offsets(op, "q_offsets", q_offsets, rows=np.shape(q)[0])
  B = q_offsets.shape[0] - 1
  page_table = _page_table(op, page_table, B)
  kv_lens = _int32(op, "kv_lens", kv_lens, (B,))
  Tq, Nq, D = q.shape
  if cache.head_dim != D:
    _fail(op, f"q head_dim {D} != cache head_dim {cache.head_dim}")
  _heads(op, Nq, cache.num_kv_heads)
  var = build_variant(op, causal, sliding_window, logits_soft_cap, variant)
  _check_params(op, var, Nq)
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=q.dtype,
                       kv_dtype=cache.dtype, head_dim=D, v_head_dim=cache.v_head_dim,
                       num_q_heads=Nq, num_kv_heads=cache.num_kv_heads, variant=var,
                       page_size=cache.page_size, q_len=Tq,
                       kv_len=page_table.shape[1] * cache.page_size, batch=B)
  out, lse = _run(spec, implementation, q, cache, page_table, kv_lens, q_offsets,
                  sm_scale=_scale(sm_scale, D), variant=var)
  return _ret(out, lse, return_lse)


def prefill_ragged(q, k, v, q_offsets, kv_offsets, *, causal: bool = True,
                   sm_scale: Optional[float] = None, variant: Optional[V.Variant] = None,
                   sliding_window: Window = None, logits_soft_cap: Optional[float] = None,
                   return_lse: bool = False, implementation: Optional[str] = None):
  """Packed queries against contiguous packed keys/values.

  q [Tq,Nq,D], k [Tk,Nkv,D], v [Tk,Nkv,Dv]; sequence b owns q rows
  q_offsets[b]:q_offsets[b+1] and kv rows kv_offsets[b]:kv_offsets[b+1] (both from 0,
  never decreasing, within Tq / Tk; checked when given as numpy); its queries are the
  last q_len_b <= kv_len_b of its tokens. Padding rows return 0.

  >>> o = jattn.prefill_ragged(q, k, v, q_offsets, kv_offsets)
  """
  op = "prefill_ragged"
  _rank(op, "q", q, 3, "[Tq, Nq, D]")
  _rank(op, "k", k, 3, "[Tk, Nkv, D]")
  _rank(op, "v", v, 3, "[Tk, Nkv, Dv]")
  for name, x in (("q", q), ("k", k), ("v", v)):
    _float(op, name, x)
  if k.dtype != v.dtype:
    raise TypeError(f"jattn.{op}: k ({k.dtype}) and v ({v.dtype}) must share a dtype")
  q_offsets = _offsets(op, "q_offsets", q_offsets, rows=np.shape(q)[0])
  kv_offsets = _offsets(op, "kv_offsets", kv_offsets, q_offsets.shape[0] - 1, np.shape(k)[0])
  Tq, Nq, D = q.shape
  Tk, Nkv, Dk = k.shape
  if Dk != D:
    _fail(op, f"q head_dim {D} != k head_dim {Dk}")
  if v.shape[:2] != (Tk, Nkv):
    _fail(op, f"v shape {v.shape} must match k's [Tk, Nkv] = {k.shape[:2]}")
  _heads(op, Nq, Nkv)
  var = build_variant(op, causal, sliding_window, logits_soft_cap, variant)
  _check_params(op, var, Nq)
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=q.dtype,
                       kv_dtype=k.dtype, head_dim=D, v_head_dim=v.shape[2], num_q_heads=Nq,
                       num_kv_heads=Nkv, variant=var, q_len=Tq, kv_len=Tk,
                       batch=q_offsets.shape[0] - 1)
  out, lse = _run(spec, implementation, q, k, v, q_offsets, kv_offsets,
                  sm_scale=_scale(sm_scale, D), variant=var)
  return _ret(out, lse, return_lse)


def merge_states(o_a, lse_a, o_b, lse_b, *, implementation: Optional[str] = None):
  """Exact merge of two partial attentions over disjoint key sets (cascade attention):
  o [..., H, Dv], lse [..., H] natural-log sums. Returns (o, lse).

  >>> o, lse = jattn.merge_states(o_prefix, lse_prefix, o_suffix, lse_suffix)
  """
  op = "merge_states"
  if o_a.shape != o_b.shape or lse_a.shape != lse_b.shape:
    _fail(op, f"shapes differ: o {o_a.shape} vs {o_b.shape}, lse {lse_a.shape} vs {lse_b.shape}")
  if o_a.shape[:-1] != lse_a.shape:
    _fail(op, f"lse shape {lse_a.shape} must be o's shape without the last dim {o_a.shape[:-1]}")
  _float(op, "o_a", o_a)
  if o_b.dtype != o_a.dtype:
    raise TypeError(f"jattn.{op}: o_a ({o_a.dtype}) and o_b ({o_b.dtype}) must share a dtype")
  if lse_a.dtype not in (jnp.float32, jnp.float64) or lse_b.dtype != lse_a.dtype:
    raise TypeError(f"jattn.{op}: lse_a and lse_b must both be float32 (or float64), got "
                    f"{lse_a.dtype}, {lse_b.dtype}")
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=o_a.dtype,
                       kv_dtype=o_a.dtype, head_dim=o_a.shape[-1], v_head_dim=o_a.shape[-1],
                       num_q_heads=o_a.shape[-2] if o_a.ndim >= 2 else 1,
                       num_kv_heads=o_a.shape[-2] if o_a.ndim >= 2 else 1)
  return _run(spec, implementation, o_a, lse_a, o_b, lse_b)


def append_kv(cache: PagedKVCache, k_new, v_new, page_table, batch_ids, positions, *,
              implementation: Optional[str] = None) -> PagedKVCache:
  """Write new tokens into the paged cache and return the updated cache.

  k_new [T,Nkv,D], v_new [T,Nkv,Dv]: token i goes to sequence batch_ids[i] at position
  positions[i] (int32 [T]). Tokens with batch_ids < 0 (padding), or whose position or
  page id falls outside the table or the cache, are dropped: nothing outside the cache is
  written. float8 pages are quantized with the cache's scales (saturating). Under
  `jax.jit(..., donate_argnums=...)` the cache is updated in place.

  >>> cache = jattn.append_kv(cache, k_new, v_new, page_table, batch_ids, positions)
  """
  op = "append_kv"
  _cache(op, cache)
  _rank(op, "k_new", k_new, 3, "[T, Nkv, D]")
  _rank(op, "v_new", v_new, 3, "[T, Nkv, Dv]")
  _float(op, "k_new", k_new)
  _float(op, "v_new", v_new)
  T = k_new.shape[0]
  if k_new.shape != (T, cache.num_kv_heads, cache.head_dim):
    _fail(op, f"k_new must be [T, Nkv, D] = [T, {cache.num_kv_heads}, {cache.head_dim}], "
              f"got {k_new.shape}")
  if v_new.shape != (T, cache.num_kv_heads, cache.v_head_dim):
    _fail(op, f"v_new must be [T, Nkv, Dv] = [T, {cache.num_kv_heads}, {cache.v_head_dim}], "
              f"got {v_new.shape}")
  _rank(op, "page_table", page_table, 2, "[B, max_pages]")
  page_table = _int32(op, "page_table", page_table)
  batch_ids = _int32(op, "batch_ids", batch_ids, (T,))
  positions = _int32(op, "positions", positions, (T,))
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=k_new.dtype,
                       kv_dtype=cache.dtype, head_dim=cache.head_dim,
                       v_head_dim=cache.v_head_dim, num_q_heads=cache.num_kv_heads,
                       num_kv_heads=cache.num_kv_heads, page_size=cache.page_size, q_len=T)
  return _run(spec, implementation, cache, k_new, v_new, page_table, batch_ids, positions)


# ----------------------------------------------------------------------------- MLA

def _latent_scale(op, name, s):
  if s is not None and jnp.size(s) != 1:
    _fail(op, f"{name} must be a scalar float32 scale, got shape {jnp.shape(s)}")


def mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, page_table, kv_lens, *,
               sm_scale: float, ckv_scale=None, kpe_scale=None, return_lse: bool = False,
               implementation: Optional[str] = None):
  """Multi-head latent attention (DeepSeek-V2/V3) over a paged latent cache, absorbed form.

  q_nope [B,H,R] (W_UK absorbed; R = kv_lora_rank, 512 in DeepSeek-V3), q_pe [B,H,Dr]
  (Dr = 64); ckv_cache [P,page_size,R], kpe_cache [P,page_size,Dr]; float8 caches need
  scalar `ckv_scale`/`kpe_scale`. logits = sm_scale * (q_nope.ckv + q_pe.kpe), output
  softmax(logits) @ ckv: [B,H,R] (apply W_UV afterwards). Pass q with a token axis,
  [B,T,H,R] / [B,T,H,Dr], for T > 1 new tokens per sequence (speculative decoding,
  chunked prefill): they are the last T of kv_lens[b] tokens, causal among themselves.
  `sm_scale` is required: MLA scales by the un-absorbed head dim (1/sqrt(128 + 64)).

  >>> o = jattn.mla_decode(q_nope, q_pe, ckv, kpe, page_table, kv_lens, sm_scale=192**-0.5)
  """
  op = "mla_decode"
  single = jnp.ndim(q_nope) == 3
  if jnp.ndim(q_pe) != jnp.ndim(q_nope):
    _fail(op, f"q_nope {jnp.shape(q_nope)} and q_pe {jnp.shape(q_pe)} must have the same rank "
              "([B, H, .] or [B, T, H, .])")
  if single:
    q_nope, q_pe = q_nope[:, None], q_pe[:, None]
  _rank(op, "q_nope", q_nope, 4, "[B, H, R] or [B, T, H, R]")
  _rank(op, "q_pe", q_pe, 4, "[B, H, Dr] or [B, T, H, Dr]")
  _rank(op, "ckv_cache", ckv_cache, 3, "[P, page_size, R]")
  _rank(op, "kpe_cache", kpe_cache, 3, "[P, page_size, Dr]")
  _float(op, "q_nope", q_nope)
  if q_pe.dtype != q_nope.dtype:
    raise TypeError(f"jattn.{op}: q_pe ({q_pe.dtype}) must have q_nope's dtype ({q_nope.dtype})")
  for name, c in (("ckv_cache", ckv_cache), ("kpe_cache", kpe_cache)):
    _float(op, name, c, FLOAT_DTYPES + FLOAT8_DTYPES)
  B, T, H, R = q_nope.shape
  if q_pe.shape[:3] != (B, T, H):
    _fail(op, f"q_pe shape {q_pe.shape} must match q_nope's [B, T, H] = {(B, T, H)}")
  if ckv_cache.shape[-1] != R or kpe_cache.shape[-1] != q_pe.shape[-1]:
    _fail(op, f"cache dims (ckv {ckv_cache.shape[-1]}, kpe {kpe_cache.shape[-1]}) must match "
              f"q_nope ({R}) and q_pe ({q_pe.shape[-1]})")
  if ckv_cache.shape[:2] != kpe_cache.shape[:2]:
    _fail(op, f"ckv_cache {ckv_cache.shape} and kpe_cache {kpe_cache.shape} disagree on [P, page_size]")
  for name, c, s in (("ckv", ckv_cache, ckv_scale), ("kpe", kpe_cache, kpe_scale)):
    if is_float8(c.dtype) and s is None:
      raise TypeError(f"jattn.{op}: float8 {name}_cache needs {name}_scale")
    _latent_scale(op, f"{name}_scale", s)
  page_table = _page_table(op, page_table, B)
  kv_lens = _int32(op, "kv_lens", kv_lens, (B,))
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=q_nope.dtype,
                       kv_dtype=ckv_cache.dtype, head_dim=R + q_pe.shape[-1], v_head_dim=R,
                       num_q_heads=H, num_kv_heads=1, page_size=ckv_cache.shape[1],
                       q_len=T, kv_len=page_table.shape[1] * ckv_cache.shape[1], batch=B)
  out, lse = _run(spec, implementation, q_nope, q_pe, ckv_cache, kpe_cache, page_table,
                  kv_lens, sm_scale=float(sm_scale), ckv_scale=ckv_scale, kpe_scale=kpe_scale)
  if single:
    out, lse = out[:, 0], lse[:, 0]
  return _ret(out, lse, return_lse)


def mla_append(ckv_cache, kpe_cache, ckv_new, kpe_new, page_table, batch_ids, positions, *,
               ckv_scale=None, kpe_scale=None, implementation: Optional[str] = None):
  """Write new latent tokens (ckv_new [T,R], kpe_new [T,Dr]) into the paged latent cache,
  with `append_kv`'s conventions (page_table, batch_ids < 0 = padding, drops out of range,
  float8 quantized with the scalar scales). Returns (ckv_cache, kpe_cache)."""
  op = "mla_append"
  _rank(op, "ckv_cache", ckv_cache, 3, "[P, page_size, R]")
  _rank(op, "kpe_cache", kpe_cache, 3, "[P, page_size, Dr]")
  _rank(op, "ckv_new", ckv_new, 2, "[T, R]")
  _rank(op, "kpe_new", kpe_new, 2, "[T, Dr]")
  T = np.shape(ckv_new)[0]
  for name, new, cache in (("ckv_new", ckv_new, ckv_cache), ("kpe_new", kpe_new, kpe_cache)):
    if np.shape(new) != (T, np.shape(cache)[-1]):
      _fail(op, f"{name} must be [T, {np.shape(cache)[-1]}] (T = {T}, the cache's last dim), "
                f"got {np.shape(new)}")

  def view(c, s):
    return c[:, :, None, :], None if s is None else jnp.reshape(jnp.asarray(s, jnp.float32), (1,))

  (ck, cs), (kk, ks) = view(ckv_cache, ckv_scale), view(kpe_cache, kpe_scale)
  out = append_kv(PagedKVCache(ck, kk, cs, ks), ckv_new[:, None], kpe_new[:, None],
                  page_table, batch_ids, positions, implementation=implementation)
  return out.k_pages[:, :, 0], out.v_pages[:, :, 0]


# ----------------------------------------------------------------------------- block-sparse

def block_sparse_attention(q, k, v, layout, *, causal: bool = False,
                           sm_scale: Optional[float] = None,
                           variant: Optional[V.Variant] = None, return_lse: bool = False,
                           plan=None, implementation: Optional[str] = None):
  """Attention over the (query block, key block) tiles a `BlockSparseLayout` lists.

  q [B,T,Nq,D], k/v [B,S,Nkv,D|Dv]; the layout (`jattn.block_sparse`) covers (T, S) with
  one shared or Nq per-head block masks; query t sees key s iff its tile is listed and
  `causal` / the variant keep it (a layout works on whole tiles: token masks inside a
  tile come from these arguments). Rows that see nothing return 0. `plan` (from
  `jattn.plan_block_sparse(layout, T, S, causal=..., variant=...)`) holds the kernel's
  tile lists, made once per layout instead of in every call.

  >>> layout = jattn.block_sparse.local_global(T, S, block=64, window_blocks=4)
  >>> o = jattn.block_sparse_attention(q, k, v, layout, causal=True)
  """
  from jattn.block_sparse import BlockSparseLayout
  op = "block_sparse_attention"
  if not isinstance(layout, BlockSparseLayout):
    raise TypeError(f"jattn.{op}: layout must be a jattn.block_sparse.BlockSparseLayout")
  _rank(op, "q", q, 4, "[B, T, Nq, D]")
  _rank(op, "k", k, 4, "[B, S, Nkv, D]")
  _rank(op, "v", v, 4, "[B, S, Nkv, Dv]")
  for name, x in (("q", q), ("k", k), ("v", v)):
    _float(op, name, x)
  if k.dtype != v.dtype:
    raise TypeError(f"jattn.{op}: k ({k.dtype}) and v ({v.dtype}) must share a dtype")
  B, T, Nq, D = q.shape
  S, Nkv = k.shape[1], k.shape[2]
  if k.shape[3] != D or v.shape[:3] != k.shape[:3] or k.shape[0] != B:
    _fail(op, f"shapes q {q.shape}, k {k.shape}, v {v.shape} are inconsistent")
  _heads(op, Nq, Nkv)
  if layout.num_heads not in (1, Nq):
    _fail(op, f"layout has {layout.num_heads} heads; expected 1 or Nq = {Nq}")
  if layout.block_size is not None:
    R, C = layout.block_size
    if (-(-T // R), -(-S // C)) != layout.block_mask.shape[1:]:
      _fail(op, f"layout has {layout.block_mask.shape[1:]} blocks of {layout.block_size}; "
                f"inputs (T, S) = {(T, S)} need {(-(-T // R), -(-S // C))}")
  var = build_variant(op, causal, None, None, variant)
  _check_params(op, var, Nq)
  if plan is not None:
    from jattn.block_sparse import BlockSparsePlan
    if not isinstance(plan, BlockSparsePlan):
      raise TypeError(f"jattn.{op}: plan must come from jattn.plan_block_sparse")
    why = plan.mismatch(layout, T, S, var)
    if why is not None:
      _fail(op, f"the plan was made for another call: {why}")
  spec = dispatch.Spec(op=op, platform=dispatch.current_platform(), dtype=q.dtype,
                       kv_dtype=k.dtype, head_dim=D, v_head_dim=v.shape[3], num_q_heads=Nq,
                       num_kv_heads=Nkv, variant=var, q_len=T, kv_len=S, batch=B,
                       extra=(("block_size", layout.block_size),))
  out, lse = _run(spec, implementation, q, k, v, layout, sm_scale=_scale(sm_scale, D),
                  variant=var, plan=plan)
  return _ret(out, lse, return_lse)
