"""Solutions (candidate implementations of a definition) and the kernels' config spaces.

A `Solution` is a callable with the op's uniform signature (that of `jattn.xla.<op>`,
returning (out, lse)), a capability check and the platforms it runs on; the dispatcher
sees it as an `Impl`. Every implementation registered for an op is a solution
(`registered`), and so is every point of a Pallas kernel's `ConfigSpace` (named like
`pallas_mosaic[block_kv=64,num_stages=3,persistent=False]`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
from typing import Any, Callable, Optional

from jattn import dispatch

SMEM_LIMIT = 227 * 1024      # dynamic shared memory a Hopper CTA may use


def _serves_all(spec) -> Optional[str]:
  return None


@dataclasses.dataclass(frozen=True, eq=False)
class Solution:
  """A candidate for `definition` (an op name). `fn(*args, interpret=..., **kw)` takes
  the op's uniform arguments (see `jattn.xla`) and returns (out, lse); `check(spec)`
  returns None or the reason it cannot serve `spec`. `family` is a dispatcher family
  ("xla" for plain jnp, "pallas", "cuda"); `interpretable` lets a Pallas solution run
  in interpret mode off-GPU. `config` is the kernel config point, if any."""

  name: str
  definition: str
  fn: Callable
  family: str = "xla"
  platforms: tuple = ("cpu", "gpu", "tpu")
  check: Callable = _serves_all
  interpretable: bool = False
  config: Optional[dict] = None
  description: str = ""

  def __post_init__(self):
    if self.family not in dispatch.FAMILIES:
      raise ValueError(f"Solution {self.name!r}: family must be one of {dispatch.FAMILIES}")

  @functools.cached_property
  def impl(self) -> dispatch.Impl:
    """The dispatcher's view of this solution (never registered: overrides use it)."""
    return dispatch.Impl(op=self.definition, name=self.name, family=self.family,
                         platforms=tuple(self.platforms), loader=lambda: self.fn,
                         check=self.check, interpretable=self.interpretable)


def _call_loaded(loader, *args, **kw):
  return loader()(*args, **kw)


def from_impl(impl: dispatch.Impl) -> Solution:
  return Solution(name=impl.name, definition=impl.op,
                  fn=functools.partial(_call_loaded, impl.loader), family=impl.family,
                  platforms=impl.platforms, check=impl.check,
                  interpretable=impl.interpretable, description="registered implementation")


def registered(definition: str) -> dict[str, Solution]:
  """The implementations registered for `definition`, as solutions, by name."""
  return {i.name: from_impl(i) for i in dispatch.implementations(definition)}


# ----------------------------------------------------------------------------- config spaces

@dataclasses.dataclass(frozen=True)
class ConfigSpace:
  """The config space of one registered kernel for one op.

  axes / tiny_axes: name -> values, searched on the GPU / with --tiny (interpret, CPU).
  build(config) -> fn with the op's uniform signature running that config.
  valid(config, spec) -> None or why the point cannot run `spec` (shared memory, pages).
  heuristic(spec, interpret) -> the point the kernel picks by itself (no table).
  same(config, spec, workload, interpret) -> a key equal for points that run the same
  kernel on this workload (only the first of them is timed); None: all points differ.
  """

  definition: str
  impl: str
  axes: dict
  tiny_axes: dict
  build: Callable[[dict], Callable]
  valid: Callable[[dict, Any], Optional[str]]
  heuristic: Callable[[Any, bool], dict]
  same: Optional[Callable] = None

  def points(self, tiny: bool = False) -> list[dict]:
    axes = self.tiny_axes if tiny else self.axes
    return [dict(zip(axes, vals)) for vals in itertools.product(*axes.values())]

  def solution(self, config: dict) -> Solution:
    base = {i.name: i for i in dispatch.implementations(self.definition)}[self.impl]
    name = self.impl + "[" + ",".join(f"{k}={v}" for k, v in config.items()) + "]"

    def check(spec):
      return base.check(spec) or self.valid(config, spec)

    return Solution(name=name, definition=self.definition, fn=self.build(dict(config)),
                    family=base.family, platforms=base.platforms, check=check,
                    interpretable=base.interpretable, config=dict(config),
                    description=f"{self.impl} with a fixed config")

  def candidates(self, spec, workload, *, tiny: bool = False, interpret: bool = False):
    """(config, is_heuristic) to time for `spec`: the heuristic's point first (added when
    outside the space), invalid points dropped, kernels that are the same run once."""
    heur = self.heuristic(spec, interpret)
    # Nearest the heuristic first: of points that run the same kernel, the first is timed.
    near = lambda p: -sum(p[k] == heur.get(k) for k in p)
    pts = [heur] + sorted((p for p in self.points(tiny) if p != heur), key=near)
    seen, out = set(), []
    for p in pts:
      if self.valid(p, spec) is not None:
        continue
      key = None if self.same is None else self.same(p, spec, workload, interpret)
      if key is not None and key in seen:
        continue
      seen.add(key)
      out.append((p, p == heur))
    return out


def _module(name):
  return importlib.import_module(name)


# Pallas prefill / dense attention (jattn/pallas/prefill.py): Config(block_q, block_kv,
# num_stages, heavy_first, persistent, early_qk, lazy_rescale, pin_softmax). block_q stays
# 64 (a consumer warpgroup's wgmma M); the last three are not searched (unset, the kernel
# applies its measured rules).

def _prefill_build(op):
  def build(config):
    mod = _module("jattn.pallas.prefill")
    return functools.partial(getattr(mod, op), config=mod.Config(**config))
  return build


def _prefill_smem(config: dict, d: int, dv: int) -> int:
  """Shared memory of the forward kernel (`jattn.pallas.prefill.smem_bytes`)."""
  mod = _module("jattn.pallas.prefill")
  cfg = mod.Config(**config)
  return mod.smem_bytes(cfg, d, dv, mod.q_buffers(cfg, d, dv))


def _prefill_valid(config: dict, spec) -> Optional[str]:
  d, dv = spec.head_dim, spec.v_head_dim
  if max(d, dv) > 128 and config["block_kv"] > 64:
    return "head dim > 128 takes at most 64-key tiles (registers)"
  if max(d, dv) > 64 and config["block_kv"] > 128:
    return "head dim > 64 takes at most 128-key tiles (registers)"
  if _prefill_smem(config, d, dv) > SMEM_LIMIT:
    return f"needs {_prefill_smem(config, d, dv) // 1024} KiB of shared memory"
  if spec.page_size is not None:
    if not _module("jattn.pallas.prefill").page_fits(spec.page_size, config["block_kv"]):
      return f"page_size {spec.page_size} does not tile block_kv {config['block_kv']}"
  return None


def _prefill_heuristic(axes):
  def heuristic(spec, interpret):
    cfg = _module("jattn.pallas.prefill").default_config(
        spec.head_dim, spec.v_head_dim, interpret, spec.op, kv_len=spec.kv_len,
        band=spec.variant.band if spec.variant is not None else None)
    return {k: getattr(cfg, k) for k in axes}
  return heuristic


# (32-key tiles: the P.V wgmma needs K a multiple of 64; the H100 tune run of 2026-11-25
# recorded that error for every 32-key point at D256.)
_PREFILL_AXES = dict(block_kv=(64, 128, 256), num_stages=(2, 3, 4), persistent=(False, True))
_PREFILL_TINY = dict(block_kv=(64,), num_stages=(2,), persistent=(False,))

# Pallas paged decode (jattn/pallas/decode.py): DecodeConfig(stages, waves, q_first). The plan
# knobs act only on plans made inside `decode`; points whose plans cut the sequences the
# same way (they differ only in idle unit slots) are timed once.

def _decode_build(config):
  mod = _module("jattn.pallas.decode")
  return functools.partial(mod.decode, config=mod.DecodeConfig(**config))


def _decode_valid(config: dict, spec) -> Optional[str]:
  mod = _module("jattn.pallas.decode")
  variant = spec.variant or _module("jattn.variants").Variant()
  staged = mod._staged(spec.kv_dtype, spec.dtype, spec.page_size, variant)
  qk8 = mod._qk8(spec.kv_dtype, spec.page_size, spec.head_dim, spec.v_head_dim, variant)
  q_first = config.get("q_first", mod._q_first(None, qk8))
  need = mod._smem_bytes(config["stages"], mod.block_kv(spec.page_size), spec.head_dim,
                         spec.v_head_dim, spec.dtype, spec.kv_dtype, staged, qk8, q_first)
  if need > SMEM_LIMIT:
    return f"needs {need // 1024} KiB of shared memory"
  return None


def _decode_heuristic(axes):
  def heuristic(spec, interpret):
    mod = _module("jattn.pallas.decode")
    variant = spec.variant or _module("jattn.variants").Variant()
    staged = mod._staged(spec.kv_dtype, spec.dtype, spec.page_size, variant)
    qk8 = mod._qk8(spec.kv_dtype, spec.page_size, spec.head_dim, spec.v_head_dim, variant)
    out = dict(stages=mod._stages(None, mod.block_kv(spec.page_size), spec.head_dim,
                                  spec.v_head_dim, spec.dtype, spec.kv_dtype, staged, qk8),
               waves=4, q_first=mod._q_first(None, qk8))
    return {k: out[k] for k in axes}
  return heuristic


def _decode_same(config, spec, workload, interpret):
  kernel = (config["stages"], config.get("q_first"))
  if interpret or "waves" not in config:   # interpreted plans use a fixed small grid
    return kernel
  import numpy as np
  mod = _module("jattn.pallas.decode")
  plan = mod.plan_decode(np.asarray(workload.lens()[1]), spec.page_size, spec.num_q_heads,
                         spec.num_kv_heads, spec.head_dim, max_kv_len=spec.kv_len,
                         waves=config["waves"])
  units = np.asarray(plan.units)
  return kernel + (units[units[:, 0] >= 0].tobytes(),)   # idle unit slots aside


_DECODE_AXES = dict(stages=(2, 3, 4), waves=(2, 4, 8), q_first=(False, True))
_DECODE_TINY = dict(stages=(2,))

SPACES: dict[str, ConfigSpace] = {
    op: ConfigSpace(op, "pallas_mosaic", _PREFILL_AXES, _PREFILL_TINY, _prefill_build(op),
                    _prefill_valid, _prefill_heuristic(_PREFILL_AXES))
    for op in ("attention", "prefill", "prefill_ragged")}
SPACES["decode"] = ConfigSpace("decode", "pallas_mosaic", _DECODE_AXES, _DECODE_TINY,
                               _decode_build, _decode_valid, _decode_heuristic(_DECODE_AXES),
                               _decode_same)


def resolve(definition: str, name: str, config: Optional[dict],
            extra: dict[str, Solution]) -> Optional[Solution]:
  """The solution a trace names: one passed in `extra` (by name), a config point of the
  definition's space, or a registered implementation; None when unknown here."""
  if name in extra:
    return extra[name]
  space = SPACES.get(definition)
  if config is not None and space is not None and name.startswith(space.impl + "["):
    return dataclasses.replace(space.solution(config), name=name)
  return registered(definition).get(name)
