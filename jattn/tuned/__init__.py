"""Tuned kernel configs, one table per GPU, read by the kernels at trace time.

`jattn/tuned/<gpu>.json` (gpu = the device kind as a slug, e.g. `h100-80gb-hbm3`) is
written by `python -m jattn.bench tune` from a real run on that GPU, next to the traces
it was built from (`<gpu>.traces.jsonl`). A kernel asks `lookup(key)` for its config,
with `key = bucket(op, ...)` made from the call's static shapes; a missing table or entry
returns None and the kernel uses its own heuristic. Nothing here is typed by hand.

Table: {"format": 1, "device": <device kind>, "generated", "jax", "jattn", "traces",
"entries": {key: {"kernel", "config", "median_ms", "heuristic_ms", "workload", ...}}}.

Shape bucket: op, dtypes, head dims, head counts and page size exactly; batch, query
length and kv length rounded up to a power of two; the mask kind of the variant
("none", "causal", "window", "custom"; "+transform" when logits are transformed).

`JATTN_TUNED=off` disables every table; `JATTN_TUNED=<path>` reads that file instead of
the packaged one. `use(table)` does either for a block of code (tests, the tuner).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import logging
import os
import re
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

log = logging.getLogger("jattn")
DIR = os.path.dirname(os.path.abspath(__file__))
FORMAT = 1
_UNSET = object()
_TABLE: contextvars.ContextVar = contextvars.ContextVar("jattn_tuned_table", default=_UNSET)
_LOADED: dict = {}
history: collections.deque = collections.deque(maxlen=64)   # (key, config or None)


def slug(device_kind: str) -> str:
  """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (the table's file name)."""
  s = re.sub(r"^nvidia\s+", "", device_kind.strip().lower())
  return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "unknown"


def device_kind() -> str:
  """The default device's kind ('NVIDIA H100 80GB HBM3'), or its platform ('cpu')."""
  dev = jax.devices()[0]
  return dev.device_kind if dev.platform == "gpu" else dev.platform


def path_for(kind: str) -> str:
  return os.path.join(DIR, slug(kind) + ".json")


# ----------------------------------------------------------------------------- buckets

def _pow2(n: Optional[int]) -> Optional[int]:
  if n is None:
    return None
  return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def mask_kind(variant) -> str:
  if variant is None:
    return "none"
  if variant.has_custom_mask:
    kind = "custom"
  elif variant.band is None:
    kind = "none"
  elif variant.band[0] is None and variant.band[1] is None:
    kind = "none"
  elif variant.band[0] is None:
    kind = "causal"
  else:
    kind = "window"
  return kind + ("+transform" if variant.logits_transform is not None else "")


def bucket(op: str, *, dtype, kv_dtype=None, head_dim: int, v_head_dim: int,
           num_q_heads: int, num_kv_heads: int, batch: Optional[int], q_len: Optional[int],
           kv_len: Optional[int], page_size: Optional[int] = None, variant=None) -> str:
  """The table key of one call. Kernels and `spec_bucket` must pass the same values as
  `jattn.api` puts into its `dispatch.Spec` (packed ops: q_len = packed rows, paged ops:
  kv_len = max_pages * page_size)."""
  kv = jnp.dtype(dtype if kv_dtype is None else kv_dtype).name
  parts = [op, jnp.dtype(dtype).name, kv, f"d{head_dim}", f"dv{v_head_dim}",
           f"h{num_q_heads}", f"kvh{num_kv_heads}", f"b{_pow2(batch)}", f"t{_pow2(q_len)}",
           f"s{_pow2(kv_len)}", f"p{page_size}", mask_kind(variant)]
  return "|".join(str(p) for p in parts)


def spec_bucket(spec) -> str:
  """`bucket` of a `jattn.dispatch.Spec`."""
  return bucket(spec.op, dtype=spec.dtype, kv_dtype=spec.kv_dtype, head_dim=spec.head_dim,
                v_head_dim=spec.v_head_dim, num_q_heads=spec.num_q_heads,
                num_kv_heads=spec.num_kv_heads, batch=spec.batch, q_len=spec.q_len,
                kv_len=spec.kv_len, page_size=spec.page_size, variant=spec.variant)


# ----------------------------------------------------------------------------- tables

def load(path: str) -> Optional[dict]:
  """The table at `path` (cached by modification time), or None if there is none."""
  try:
    mtime = os.path.getmtime(path)
  except OSError:
    return None
  hit = _LOADED.get(path)
  if hit is None or hit[0] != mtime:
    with open(path) as f:
      table = json.load(f)
    if table.get("format") != FORMAT:
      raise ValueError(f"{path}: tuned table format {table.get('format')!r}, expected {FORMAT}")
    _LOADED[path] = hit = (mtime, table)
  return hit[1]


def current_table() -> Optional[dict]:
  """The table in force for this device: `use(...)`'s, else $JATTN_TUNED's, else the
  packaged one; None when disabled or absent."""
  chosen = _TABLE.get()
  if chosen is _UNSET:
    env = os.environ.get("JATTN_TUNED", "")
    if env.lower() in ("0", "off", "none", "false"):
      return None
    chosen = env or path_for(device_kind())
  if chosen is None or isinstance(chosen, dict):
    table = chosen
  else:
    table = load(chosen)
  if table is not None and table.get("device") != device_kind():
    return None   # a table is for the GPU it was measured on only
  return table


@contextlib.contextmanager
def use(table: Union[None, str, dict]):
  """Use `table` (a path or a table dict; None: no table) inside the block."""
  token = _TABLE.set(table)
  try:
    yield
  finally:
    _TABLE.reset(token)


def lookup(key: str, heuristic: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
  """The tuned config (a dict of the kernel's config fields) for `key` on this device,
  or None (the kernel then uses its heuristic). With `heuristic` (the kernel's heuristic
  config today, as a dict), an entry tuned against a different heuristic is stale and
  not used: the tuner never compared its pick with the heuristic the kernel has now."""
  table = current_table()
  entry = None if table is None else table.get("entries", {}).get(key)
  config = None if entry is None else dict(entry["config"])
  if config is not None and heuristic is not None:
    then = entry.get("heuristic_config") or {}
    if any(heuristic.get(k, v) != v for k, v in then.items()):
      log.debug("jattn.tuned %s: stale (tuned against %s, the heuristic is now %s)", key,
                then, heuristic)
      config = None
  history.append((key, config))
  log.debug("jattn.tuned %s -> %s", key, config if config is not None else "heuristic")
  return config
