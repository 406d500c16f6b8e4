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

Overrides: inside `with override(chooser):` a call with `implementation=None` first asks
`chooser(spec)` for an Impl (innermost override first; None passes), then falls back to
the priorities. `jattn.apply(traces)` (jattn.bench) installs one that picks the fastest
correct solution per shape bucket. Choices are made at trace time, so a function jitted
and traced before the context keeps its earlier choice.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
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


Chooser = Callable[[Spec], Optional[Impl]]
_OVERRIDES: contextvars.ContextVar = contextvars.ContextVar("jattn_overrides", default=())


@contextlib.contextmanager
def override(chooser: Chooser):
  """While active, `select(spec, None)` asks `chooser(spec)` for an Impl before the
  priorities (innermost override first). An Impl that cannot serve the spec is passed
  over with its reason; an interpretable one runs interpreted off-GPU, as when named."""
  token = _OVERRIDES.set(_OVERRIDES.get() + (chooser,))
  try:
    yield
  finally:
    _OVERRIDES.reset(token)


def usable(impl: Impl, spec: Spec, named: bool) -> tuple[Optional[bool], Optional[str]]:
  """(interpret, None) when `impl` can serve `spec`, else (None, reason)."""
  interpret = False
  if spec.platform not in impl.platforms:
    if impl.interpretable and named and spec.platform == "cpu":
      interpret = True
    else:
      return None, f"runs on {list(impl.platforms)}, not {spec.platform}"
  why = impl.check(spec)
  if why is not None:
    return None, why
  return interpret, None


def _choose(spec: Spec, impl: Impl, interpret: bool, why: str) -> Choice:
  choice = Choice(impl, impl.loader(), interpret, why)
  history.append((spec.op, impl.name + (" (interpret)" if interpret else "")))
  log.debug("jattn.%s -> %s%s (passed over: %s)", spec.op, impl.name,
            " [interpret]" if interpret else "", why)
  return choice


def select(spec: Spec, implementation: Optional[str]) -> Choice:
  """Pick the implementation for `spec`; raise NotImplementedError naming what is
  missing when the request cannot be served."""
  impls = _REGISTRY[spec.op]
  reasons = []
  if implementation is None:
    wanted = impls
    for chooser in reversed(_OVERRIDES.get()):
      impl = chooser(spec)
      if impl is None or impl.op != spec.op:
        continue
      interpret, why = usable(impl, spec, named=True)
      if why is None:
        return _choose(spec, impl, interpret, "; ".join(reasons + ["override"]))
      reasons.append(f"{impl.name} (override): {why}")
  else:
    wanted = [i for i in impls if implementation in (i.family, i.name)]
    if not wanted:
      names = sorted({i.family for i in impls} | {i.name for i in impls})
      raise NotImplementedError(
          f"jattn.{spec.op}: no implementation named {implementation!r}; "
          f"available: {names}")
  for impl in wanted:
    interpret, why = usable(impl, spec, named=implementation is not None)
    if why is not None:
      reasons.append(f"{impl.name}: {why}")
      continue
    return _choose(spec, impl, interpret, "; ".join(reasons) if reasons else "first choice")
  raise NotImplementedError(
      f"jattn.{spec.op}: implementation={implementation!r} cannot serve this call: "
      + "; ".join(reasons))


def chosen(op: str) -> Optional[str]:
  """Name of the implementation most recently chosen for `op` (None if never)."""
  for o, name in reversed(history):
    if o == op:
      return name
  return None
