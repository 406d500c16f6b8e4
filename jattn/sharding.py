"""Batch and head sharding of the public ops: each device runs the single-device
implementation on its slice, and nothing is all-gathered.

A `pallas_call` or an FFI custom call is opaque to XLA's SPMD partitioner: left alone, the
partitioner replicates its operands (an all-gather of Q/K/V) and runs the whole op on every
device. So every op passes through `run` in front of the dispatcher. `run` reads how each
argument is sharded, checks that only batch and head dimensions are, and calls the op once
per shard; the dispatcher then chooses the implementation for the per-shard shapes.

Two ways in, chosen by the mesh axis types of the arguments:

  Explicit axes (`jax.make_mesh`'s default in JAX 0.11): an array's sharding is part of its
    type, `jax.typeof(x).sharding`, so it is known while tracing. The op runs inside
    `jax.shard_map`; differentiable and vmappable as usual.
  Auto axes (`Mesh(..., axis_types=Auto)`, `jit(in_shardings=...)`): shardings are chosen by
    the compiler after tracing, so the op becomes a `custom_partitioning` call with a Shardy
    sharding rule; its partition callback applies the same checks to the shardings the
    compiler proposes and lowers the same per-shard function (a bad sharding surfaces as a
    compile error carrying the ShardingError text). Gradients go through a `custom_vjp`
    whose backward (the per-shard VJP) is partitioned the same way. No vmap here:
    custom_partitioning has no batching rule; use explicit axes for that.

Roles. Every dimension of every array argument has a role: "b" batch, "h" query heads,
"k" kv heads (split over the same mesh axes as "h", so GQA groups stay whole), a digit for
merge_states' elementwise dimensions, and "." for a dimension that must not be sharded
(sequence, head_dim, pages, ...). A sharded "." dimension raises `ShardingError` naming
the argument, the dimension and the mesh axes; so do inconsistent shardings (q heads over
one axis, k heads over another) and sizes the mesh does not divide. Arguments replicated
along a role another argument shards are sliced locally (no communication).

Variants. Inside a shard the kernels see local head and batch indices. When a variant
function reads `ctx.head` or `ctx.batch` (checked by tracing it), the variant is rewritten
so that it sees global indices, passed as two extra per-head params. A `key_transform`
gets no params, so one that reads ctx.head/ctx.batch on a sharded dimension is rejected.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import (ArrayMapping, CompoundFactor,
                                                  SdyShardingRule, custom_partitioning)
from jax._src import core as jax_core
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jattn.variants import Context, Variant


class ShardingError(ValueError):
  """An op was called with a sharding it cannot partition without gathering."""


# Positional arguments of every op's implementations, in `jattn.api`'s order.
ARGS = {
    "attention": ("q", "k", "v"),
    "block_sparse_attention": ("q", "k", "v", "layout"),
    "decode": ("q", "cache", "page_table", "kv_lens"),
    "prefill": ("q", "cache", "page_table", "kv_lens", "q_offsets"),
    "prefill_ragged": ("q", "k", "v", "q_offsets", "kv_offsets"),
    "merge_states": ("o_a", "lse_a", "o_b", "lse_b"),
    "append_kv": ("cache", "k_new", "v_new", "page_table", "batch_ids", "positions"),
    "mla_decode": ("q_nope", "q_pe", "ckv_cache", "kpe_cache", "page_table", "kv_lens"),
}

# name -> (roles, dimension names). A name also covers the leaves below it (variant
# params, cache fields); leaves not listed must be replicated. Callables get the named
# arguments and the leaf.
_VARIANT = {"variant": ("h", "Nq")}
_CACHE = {"cache.k_pages": ("..k.", "P,page_size,Nkv,D"),
          "cache.v_pages": ("..k.", "P,page_size,Nkv,Dv"),
          "cache.k_scale": ("k", "Nkv"), "cache.v_scale": ("k", "Nkv")}
_DENSE = {"q": ("b.h.", "B,T,Nq,D"), "k": ("b.k.", "B,S,Nkv,D"), "v": ("b.k.", "B,S,Nkv,Dv"),
          "q_lengths": ("b", "B"), "kv_lengths": ("b", "B"), "q_scale": ("h", "Nq"),
          "k_scale": ("k", "Nkv"), "v_scale": ("k", "Nkv"), **_VARIANT}


def _layout_roles(named, leaf):
  per_head = leaf.shape[0] == named["q"].shape[2] > 1
  return ("h" if per_head else ".") + "." * (leaf.ndim - 1), "Hl,blocks"


def _free(named, leaf):   # merge_states: every dim of lse (and o but its last) is free
  n = jnp.ndim(named["lse_a"])
  return "0123456789"[:n] + "." * (leaf.ndim - n), None


ROLES = {
    "attention": _DENSE,
    "block_sparse_attention": {**_DENSE, "layout": _layout_roles, "plan": _layout_roles},
    "decode": {"q": ("bh.", "B,Nq,D"), **_CACHE, "page_table": ("b.", "B,max_pages"),
               "kv_lens": ("b", "B"), **_VARIANT},
    "prefill": {"q": (".h.", "Tq,Nq,D"), **_CACHE, **_VARIANT},
    "prefill_ragged": {"q": (".h.", "Tq,Nq,D"), "k": (".k.", "Tk,Nkv,D"),
                       "v": (".k.", "Tk,Nkv,Dv"), **_VARIANT},
    "merge_states": {n: _free for n in ARGS["merge_states"]},
    "append_kv": {**_CACHE, "k_new": (".k.", "tokens,Nkv,D"), "v_new": (".k.", "tokens,Nkv,Dv")},
    "mla_decode": {"q_nope": ("b.h.", "B,T,H,R"), "q_pe": ("b.h.", "B,T,H,Dr"),
                   "page_table": ("b.", "B,max_pages"), "kv_lens": ("b", "B")},
}


def _out_roles(op, named):
  """Roles of the op's outputs, as a pytree of role strings shaped like the outputs."""
  if op == "append_kv":
    c = named["cache"]
    return c.replace(k_pages="..k.", v_pages="..k.",
                     k_scale=None if c.k_scale is None else "k",
                     v_scale=None if c.v_scale is None else "k")
  if op == "merge_states":
    n = jnp.ndim(named["lse_a"])
    free = "0123456789"[:n]
    return (free + ".", free)
  return {"decode": ("bh.", "bh"), "prefill": (".h.", ".h"),
          "prefill_ragged": (".h.", ".h")}.get(op, ("b.h.", "b.h"))


def _hint(op, dim) -> str:
  if dim in ("T", "S") and op == "attention":
    return "use jattn.ring_attention inside jax.shard_map for sequence (context) parallelism"
  if dim in ("Tq", "Tk", "tokens"):
    return "packed tokens of several sequences cannot be split between devices; shard heads"
  if dim == "P":
    return "shard the paged cache by kv head (dim 2); page ids are global"
  return ""


_HEAD_IDS = "_jattn_global_head"    # extra per-head params carrying global indices
_BATCH0 = "_jattn_batch_offset"


# ----------------------------------------------------------------------------- leaves

def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray))


def _path_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return ".".join(parts)


@dataclasses.dataclass(frozen=True)
class _Leaf:
  name: str
  shape: tuple
  roles: str
  dims: tuple   # dimension names for messages


def _leaves(op, named):
  """Flatten the named arguments: (treedef, all leaves, [(index, _Leaf)] of the arrays)."""
  table = ROLES[op]
  flat, treedef = jax.tree_util.tree_flatten_with_path(named)
  arrays = []
  for i, (path, x) in enumerate(flat):
    if not _is_array(x):
      continue
    name = _path_name(path)
    entry, key = None, name
    while key:
      if key in table:
        entry = table[key]
        break
      key = key.rpartition(".")[0]
    if callable(entry):
      entry = entry(named, x)
    roles, dims = entry if entry is not None else ("." * x.ndim, None)
    if len(roles) != x.ndim:   # a role string for a different rank: replicate
      roles, dims = "." * x.ndim, None
    dims = tuple(dims.split(",")) if dims and len(dims.split(",")) == x.ndim else tuple(
        f"dim {d}" for d in range(x.ndim))
    arrays.append((i, _Leaf(name, tuple(x.shape), roles, dims)))
  return treedef, [x for _, x in flat], arrays


def _group(role: str) -> str:
  return "heads" if role in "hk" else role


def _axes(entry) -> tuple:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _spec_axes(spec, ndim, keep=lambda axis: True) -> tuple:
  entries = tuple(spec) + (None,) * (ndim - len(tuple(spec)))
  return tuple(tuple(a for a in _axes(e) if keep(a)) for e in entries)


def _resolve(op, leaves, specs, axis_sizes, named) -> dict:
  """Check the shardings of the array leaves against their roles and return the mesh
  axes of each role group ("b", "heads", digits). Raises ShardingError."""
  groups: dict[str, tuple] = {}
  owner: dict[str, str] = {}
  for leaf, spec in zip(leaves, specs):
    for d, (role, axes) in enumerate(zip(leaf.roles, spec)):
      if not axes:
        continue
      where = f"{leaf.name} {list(leaf.shape)} is sharded along {leaf.dims[d]} (dim {d}) over mesh axes {axes}"
      if role == ".":
        hint = _hint(op, leaf.dims[d])
        raise ShardingError(
            f"jattn.{op}: {where}; jattn partitions ops over their batch and head "
            f"dimensions only and never all-gathers inputs" + (f" ({hint})" if hint else "")
            + ". Replicate that dimension or reshard.")
      g = _group(role)
      if g in groups and groups[g] != axes:
        raise ShardingError(
            f"jattn.{op}: inconsistent shardings: {owner[g]} but {where}; the {g} "
            "dimensions of all arguments must be sharded over the same mesh axes")
      groups[g], owner[g] = axes, where
  seen = {}
  for g, axes in groups.items():
    for a in axes:
      if a in seen:
        raise ShardingError(f"jattn.{op}: mesh axis {a!r} shards both the {seen[a]} and "
                            f"the {g} dimensions")
      seen[a] = g
  if "b" in groups and op == "decode" and named.get("plan") is not None:
    raise ShardingError(
        "jattn.decode: a DecodePlan indexes the global batch, so it cannot be used with a "
        f"batch-sharded decode (batch over {groups['b']}); pass plan=None or shard heads only")
  for leaf in leaves:
    for d, role in enumerate(leaf.roles):
      axes = groups.get(_group(role), ())
      n = math.prod(axis_sizes[a] for a in axes)
      if leaf.shape[d] % n:
        raise ShardingError(
            f"jattn.{op}: {leaf.name} {list(leaf.shape)} has {leaf.shape[d]} along "
            f"{leaf.dims[d]} (dim {d}), which the {_group(role)} sharding over {axes} "
            f"({n} devices) does not divide")
  return groups


def _pspec(roles: str, groups: dict) -> P:
  def entry(role):
    axes = groups.get(_group(role), ()) if role != "." else ()
    return None if not axes else axes[0] if len(axes) == 1 else axes
  return P(*(entry(r) for r in roles))


# ----------------------------------------------------------------------------- variants

def _reads(fn, field: str, kind: str, param_names) -> bool:
  """Whether `fn` (a variant function) reads ctx.<field>: traced on tiny inputs; any
  failure to trace counts as a read."""
  def probe(x, q_pos, kv_pos, head, batch):
    ctx = Context(q_pos=q_pos, kv_pos=kv_pos, head=head, batch=batch,
                  params={n: jnp.ones((1, 1), jnp.float32) for n in param_names})
    return fn(ctx) if kind == "mask" else fn(x, ctx)

  i = jnp.ones((1, 1), jnp.int32)
  try:
    closed = jax.make_jaxpr(probe)(jnp.ones((1, 1), jnp.float32), i, i, i, i)
  except Exception:  # noqa: BLE001  (conservative: assume it reads everything)
    return True
  jaxpr = closed.jaxpr
  var = jaxpr.invars[{"head": 3, "batch": 4}[field]]
  return any(var is v for e in jaxpr.eqns for v in e.invars) or any(
      var is v for v in jaxpr.outvars)


_FNS = (("query_transform", "transform"), ("logits_transform", "transform"),
        ("logits_mask", "mask"))


def _global_ctx(ctx: Context) -> Context:
  params = dict(ctx.params)
  head, batch = ctx.head, ctx.batch
  if _HEAD_IDS in params:
    head = params.pop(_HEAD_IDS).astype(jnp.int32)
  if _BATCH0 in params:
    batch = batch + params.pop(_BATCH0).astype(jnp.int32)
  return Context(ctx.q_pos, ctx.kv_pos, head, batch, params)


def _with_global_ctx(fn, kind):
  if kind == "mask":
    def mask(ctx):
      return fn(_global_ctx(ctx))
    mask._is_band_mask = getattr(fn, "_is_band_mask", False)
    return mask
  return lambda x, ctx: fn(x, _global_ctx(ctx))


def _needs(op, variant: Variant, groups) -> tuple[bool, bool]:
  """(needs global head ids, needs the batch offset) for this variant and sharding."""
  names = tuple(variant.params)
  need = {}
  for field, g in (("head", "heads"), ("batch", "b")):
    need[field] = False
    if g not in groups:
      continue
    if variant.key_transform is not None and _reads(variant.key_transform, field,
                                                    "transform", ()):
      raise ShardingError(
          f"jattn.{op}: the variant's key_transform reads ctx.{field}, but the {field} "
          f"dimension is sharded over {groups[g]} and key transforms get no params to "
          "carry global indices; replicate that dimension or drop the dependence")
    need[field] = any(getattr(variant, f) is not None and _reads(getattr(variant, f), field,
                                                                  kind, names)
                      for f, kind in _FNS)
  return need["head"], need["batch"]


def _localize(variant: Variant, need_head, need_batch, groups, nq_local, b_local):
  """Inside a shard: the variant seeing global head/batch indices."""
  params = dict(variant.params)
  if need_head:
    h0 = jax.lax.axis_index(groups["heads"]) * nq_local
    params[_HEAD_IDS] = (jnp.arange(nq_local, dtype=jnp.int32) + h0).astype(jnp.float32)
  if need_batch:
    b0 = jax.lax.axis_index(groups["b"]) * b_local
    params[_BATCH0] = jnp.full((nq_local,), b0, jnp.float32)
  fns = {f: _with_global_ctx(getattr(variant, f), kind)
         for f, kind in _FNS if getattr(variant, f) is not None}
  return dataclasses.replace(variant, params=params, **fns)


# ----------------------------------------------------------------------------- per shard

def _local_sizes(op, named):
  """(query heads, batch) of the local q (batch None when the op has no batch dim)."""
  name = "q" if "q" in named else "q_nope"
  q, roles = named[name], ROLES[op][name][0]
  return q.shape[roles.index("h")], (q.shape[0] if roles[0] == "b" else None)


def _local_spec(spec, groups, axis_sizes, op, named):
  """The dispatcher's Spec for one shard."""
  def n(g):
    return math.prod(axis_sizes[a] for a in groups.get(g, ()))
  if op == "merge_states":   # heads = the last dim of lse, a free (digit) role
    nd = jnp.ndim(named["lse_a"])
    h = n(str(nd - 1)) if nd else 1
    return dataclasses.replace(spec, num_q_heads=spec.num_q_heads // h,
                               num_kv_heads=spec.num_kv_heads // h)
  kw = dict(num_q_heads=spec.num_q_heads // n("heads"))
  if op != "mla_decode":     # MLA's single latent kv head is never split
    kw["num_kv_heads"] = spec.num_kv_heads // n("heads")
  if spec.batch is not None and op not in ("prefill", "prefill_ragged"):
    kw["batch"] = spec.batch // n("b")
  return dataclasses.replace(spec, **kw)


def _shard_body(op, spec, implementation, local, treedef, leaves, array_idx, groups,
                axis_sizes, need):
  """The per-shard function of the array leaves: the op on local slices."""
  def body(*arrays):
    flat = list(leaves)
    for i, x in zip(array_idx, arrays):
      flat[i] = x
    named = jax.tree.unflatten(treedef, flat)
    s = _local_spec(spec, groups, axis_sizes, op, named)
    if named.get("variant") is not None and any(need):
      nq, b = _local_sizes(op, named)
      named["variant"] = _localize(named["variant"], *need, groups, nq, b)
      s = dataclasses.replace(s, variant=named["variant"])
    args = [named.pop(n) for n in ARGS[op]]
    return local(s, implementation, *args, **named)

  return body


# ----------------------------------------------------------------------------- entry

def _mesh_of(arrays):
  """("explicit" | "auto" | None, mesh): how the arguments are sharded at trace time."""
  auto = None
  for x in arrays:
    s = jax.typeof(x).sharding
    if not isinstance(s, NamedSharding) or s.mesh.empty:
      continue
    mesh = s.mesh
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    if any(types[a] == AxisType.Explicit for e in s.spec for a in _axes(e)):
      return "explicit", mesh
    if any(t == AxisType.Auto and mesh.shape[a] > 1 for a, t in types.items()):
      auto = mesh
  return ("auto", auto) if auto is not None else (None, None)


def run(spec, implementation, args, kw, local: Callable):
  """`local(spec, implementation, *args, **kw)`, once per shard when the arguments are
  sharded over batch/head mesh axes (see the module docstring)."""
  op = spec.op
  if op not in ARGS:
    return local(spec, implementation, *args, **kw)
  named = dict(zip(ARGS[op], args), **kw)
  treedef, leaves, arrays = _leaves(op, named)
  values = [leaves[i] for i, _ in arrays]
  mode, mesh = _mesh_of(values)
  if mode is None:
    return local(spec, implementation, *args, **kw)
  info = [leaf for _, leaf in arrays]
  idx = [i for i, _ in arrays]
  job = _Job(op, spec, implementation, local, named, treedef, leaves, idx, info)
  if mode == "explicit":
    return job.explicit(mesh, values)
  return job.auto(values)


@dataclasses.dataclass
class _Job:
  op: str
  spec: Any
  implementation: Any
  local: Callable
  named: dict
  treedef: Any
  leaves: list
  idx: list
  info: list

  def prepare(self, specs, axis_sizes):
    groups = _resolve(self.op, self.info, specs, axis_sizes, self.named)
    var = self.named.get("variant")
    need = _needs(self.op, var, groups) if isinstance(var, Variant) else (False, False)
    body = _shard_body(self.op, self.spec, self.implementation, self.local, self.treedef,
                       self.leaves, self.idx, groups, axis_sizes, need)
    in_specs = tuple(_pspec(leaf.roles, groups) for leaf in self.info)
    out_specs = jax.tree.map(lambda r: _pspec(r, groups), _out_roles(self.op, self.named))
    return groups, body, in_specs, out_specs

  # -- explicit axes: shard_map at trace time
  def explicit(self, mesh, values):
    sizes = dict(mesh.shape)
    explicit = {a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit}
    specs = []
    for x, leaf in zip(values, self.info):
      s = jax.typeof(x).sharding
      spec = s.spec if isinstance(s, NamedSharding) and not s.mesh.empty else P()
      specs.append(_spec_axes(spec, len(leaf.shape), lambda a: a in explicit))
    groups, body, in_specs, out_specs = self.prepare(specs, sizes)
    used = frozenset(a for axes in groups.values() for a in axes)
    if not used:
      return body(*values)
    values = [x if _spec_axes(jax.typeof(x).sharding.spec, x.ndim) == _spec_axes(ps, x.ndim)
              else jax.reshard(x, NamedSharding(mesh, ps))   # replicated -> local slice
              for x, ps in zip(values, in_specs)]
    # Manual over every mesh axis not already manual and not vmapped over (Pallas
    # interpret mode's callbacks need fully manual code); arguments are replicated over
    # the axes we do not use.
    vmapped = getattr(jax_core.get_axis_env(), "explicit_mesh_axis_names", frozenset())
    manual = frozenset(a for a, t in zip(mesh.axis_names, mesh.axis_types)
                       if t != AxisType.Manual and a not in vmapped)
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         axis_names=manual)(*values)

  # -- auto axes: custom_partitioning, checked when the compiler has chosen shardings
  def auto(self, values):
    floats = [i for i, x in enumerate(values) if jnp.issubdtype(x.dtype, jnp.inexact)]
    out_roles = _out_roles(self.op, self.named)
    out_leaves, out_tree = jax.tree.flatten(out_roles)
    global_body = _shard_body(self.op, self.spec, self.implementation, self.local,
                              self.treedef, self.leaves, self.idx, {}, {}, (False, False))
    in_roles = [leaf.roles for leaf in self.info]

    def partitioned(fn_of, roles_in, roles_out, fallback):
      """A custom_partitioning call of fn_of(groups, sizes) on the per-shard arrays."""
      cp = custom_partitioning(fallback)

      def partition(mesh, arg_shapes, result_shape):
        if not all(isinstance(a.sharding, NamedSharding) for a in arg_shapes):
          # No mesh in the lowering context: only whole (replicated) arrays are possible.
          if not all(a.sharding.is_fully_replicated for a in arg_shapes):
            raise ShardingError(f"jattn.{self.op}: cannot read the shardings the compiler "
                                "chose without a mesh; call it under jax.set_mesh(mesh)")
          return (mesh, fn_of({}, {}), jax.tree.map(lambda r: r.sharding, result_shape),
                  tuple(a.sharding for a in arg_shapes))
        sizes = dict(mesh.shape)
        specs = [_spec_axes(a.sharding.spec, len(a.shape)) for a in arg_shapes]
        groups = _resolve(self.op, self.info, specs[:len(self.info)], sizes, self.named)
        arg_sh = tuple(NamedSharding(mesh, _pspec(r, groups)) for r in roles_in)
        res_sh = jax.tree.map(lambda r: NamedSharding(mesh, _pspec(r, groups)), roles_out)
        return mesh, fn_of(groups, sizes), res_sh, arg_sh

      cp.def_partition(partition, sharding_rule=self._rule(roles_in, jax.tree.leaves(roles_out)))
      return cp

    def fwd_fn(groups, sizes):
      var = self.named.get("variant")
      need = _needs(self.op, var, groups) if isinstance(var, Variant) else (False, False)
      return _shard_body(self.op, self.spec, self.implementation, self.local, self.treedef,
                         self.leaves, self.idx, groups, sizes, need)

    forward = partitioned(fwd_fn, in_roles, out_roles, global_body)

    def vjp_of(body, groups):
      def bwd(*arrays_and_cts):
        arrays, cts = arrays_and_cts[:len(values)], arrays_and_cts[len(values):]

        def of_floats(*fl):
          a = list(arrays)
          for i, x in zip(floats, fl):
            a[i] = x
          return body(*a)

        _, pullback = jax.vjp(of_floats, *[arrays[i] for i in floats])
        grads = pullback(jax.tree.unflatten(out_tree, list(cts)))
        used = [a for axes in groups.values() for a in axes]
        out = []
        for i, g in zip(floats, grads):   # partial sums over the axes a leaf is replicated on
          mine = {a for e in _pspec(in_roles[i], groups) for a in _axes(e)}
          rest = tuple(a for a in used if a not in mine)
          out.append(jax.lax.psum(g, rest) if rest else g)
        return tuple(out)
      return bwd

    backward = partitioned(lambda groups, sizes: vjp_of(fwd_fn(groups, sizes), groups),
                           in_roles + out_leaves, tuple(in_roles[i] for i in floats),
                           vjp_of(global_body, {}))

    @jax.custom_vjp
    def op_fn(*arrays):
      return forward(*arrays)

    def op_fwd(*arrays):
      return forward(*arrays), arrays

    def op_bwd(arrays, cts):
      grads = iter(backward(*arrays, *jax.tree.leaves(cts)))
      return tuple(next(grads) if i in floats else None for i in range(len(arrays)))

    op_fn.defvjp(op_fwd, op_bwd)
    return op_fn(*values)

  def _rule(self, roles_in, roles_out):
    """The Shardy rule: one factor per role group, q heads = (kv heads, group size)."""
    all_roles = "".join(list(roles_in) + list(roles_out))
    has_k = "k" in all_roles
    G = self.spec.num_q_heads // max(self.spec.num_kv_heads, 1)
    fresh = itertools.count()
    sizes = {}

    def factor(role):
      if role == "b":
        return "b"
      if role == "k":
        return "k"
      if role == "h":
        if not has_k:
          return "h"
        if G == 1:
          return "k"
        sizes["g"] = G
        return CompoundFactor("k", "g")
      if role.isdigit():
        return f"f{role}"
      return f"u{next(fresh)}"

    ins = tuple(ArrayMapping(*(factor(r) for r in roles)) for roles in roles_in)
    outs = tuple(ArrayMapping(*(factor(r) for r in roles)) for roles in roles_out)
    return SdyShardingRule(ins, outs, **sizes)
