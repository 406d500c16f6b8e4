"""One registry of implementations, chosen at trace time by shape, dtype and platform.

Each `Impl` names an op, a family ("xla", "pallas", "cuda"), the platforms it runs on
compiled, a lazy loader (kernel modules are imported only when chosen) and a capability
check `check(spec) -> None | str` that returns the reason it cannot serve `spec`.

`implementation=` in the public API is None (best available, by priority), a family name
("xla" / "pallas" / "cuda") or an exact impl name ("pallas_mosaic", ...). A family or
name that cannot serve the call raises NotImplementedError with every reason. A
"pallas" impl asked for on a machine without a GPU runs in interpret mode.

`JATTN_LOG=debug` logs each choice and why the others were passed over; the last
choices are also kept in `history` (the demo prints them).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import logging
import os
from typing import Any, Callable, Optional

import jax

log = logging.getLogger("jattn")
if os.environ.get("JATTN_LOG", "").lower() == "debug":
  logging.basicConfig()
  log.setLevel(logging.DEBUG)

FAMILIES = ("xla", "pallas", "cuda")


@dataclasses.dataclass(frozen=True)
class Spec:
  """What an implementation is asked to do: the static facts of one call."""

  op: str
  platform: str                      # "cpu" | "gpu" | "tpu"
  dtype: Any                         # query dtype
  kv_dtype: Any                      # key/value (or page) dtype
  head_dim: int
  v_head_dim: int
  num_q_heads: int
  num_kv_heads: int
  variant: Any = None                # jattn.Variant (composed)
  page_size: Optional[int] = None
  q_len: Optional[int] = None        # static query length (T, or packed tokens)
  kv_len: Optional[int] = None       # static key length (S, or max_pages * page_size)
  batch: Optional[int] = None
  extra: tuple = ()                  # op-specific (name, value) pairs


@dataclasses.dataclass(frozen=True)
class Impl:
  op: str
  name: str
  family: str
  platforms: tuple[str, ...]
  loader: Callable[[], Callable]
  check: Callable[[Spec], Optional[str]] = lambda spec: None
  priority: int = 0                  # higher wins when implementation=None
  interpretable: bool = False        # may run in interpret mode off-GPU (Pallas)


_REGISTRY: dict[str, list[Impl]] = collections.defaultdict(list)
history: collections.deque = collections.deque(maxlen=64)


def register(impl: Impl) -> Impl:
  if impl.family not in FAMILIES:
    raise ValueError(f"unknown family {impl.family!r}")
  impls = _REGISTRY[impl.op]
  impls[:] = [i for i in impls if i.name != impl.name] + [impl]
  impls.sort(key=lambda i: -i.priority)
  return impl


def lazy(module: str, attr: str) -> Callable[[], Callable]:
  """Loader that imports `module.attr` on first use."""
  return lambda: getattr(importlib.import_module(module), attr)


def implementations(op: str) -> list[Impl]:
  return list(_REGISTRY[op])


def current_platform() -> str:
  return jax.default_backend()


@dataclasses.dataclass(frozen=True)
class Choice:
  impl: Impl
  fn: Callable
  interpret: bool
  why: str


def select(spec: Spec, implementation: Optional[str]) -> Choice:
  """Pick the implementation for `spec`; raise NotImplementedError naming what is
  missing when the request cannot be served."""
  impls = _REGISTRY[spec.op]
  if implementation is None:
    wanted = impls
  else:
    wanted = [i for i in impls if implementation in (i.family, i.name)]
    if not wanted:
      names = sorted({i.family for i in impls} | {i.name for i in impls})
      raise NotImplementedError(
          f"jattn.{spec.op}: no implementation named {implementation!r}; "
          f"available: {names}")
  reasons = []
  for impl in wanted:
    interpret = False
    if spec.platform not in impl.platforms:
      if impl.interpretable and implementation is not None and spec.platform == "cpu":
        interpret = True
      else:
        reasons.append(f"{impl.name}: runs on {list(impl.platforms)}, not {spec.platform}")
        continue
    why = impl.check(spec)
    if why is not None:
      reasons.append(f"{impl.name}: {why}")
      continue
    why = "; ".join(reasons) if reasons else "first choice"
    choice = Choice(impl, impl.loader(), interpret, why)
    history.append((spec.op, impl.name + (" (interpret)" if interpret else "")))
    log.debug("jattn.%s -> %s%s (passed over: %s)", spec.op, impl.name,
              " [interpret]" if interpret else "", why)
    return choice
  raise NotImplementedError(
      f"jattn.{spec.op}: implementation={implementation!r} cannot serve this call: "
      + "; ".join(reasons))


def chosen(op: str) -> Optional[str]:
  """Name of the implementation most recently chosen for `op` (None if never)."""
  for o, name in reversed(history):
    if o == op:
      return name
  return None
