"""The table of implementations, one entry per (op, implementation).

Kernel modules are named here, not imported: `dispatch.lazy` loads a module the first
time the dispatcher picks it. Each kernel module exposes `supports(spec) -> None | str`
(its capability check) next to its entry points, so the limits of a kernel live beside
the kernel. Every entry point of one op takes the same arguments (see `jattn.api`) and
returns `(out, lse)` (`append_kv` returns the cache).
"""

from jattn.dispatch import Impl, lazy, register


def _lazy_check(module: str, attr: str = "supports"):
  def check(spec):
    return lazy(module, attr)()(spec)
  return check


def _xla(op: str) -> Impl:
  return register(Impl(op=op, name="xla", family="xla", platforms=("cpu", "gpu", "tpu"),
                       loader=lazy("jattn.xla", op), priority=0))


for _op in ("attention", "decode", "prefill", "prefill_ragged", "merge_states", "append_kv",
            "mla_decode", "block_sparse_attention"):
  _xla(_op)

register(Impl(op="attention", name="pallas_mosaic", family="pallas", platforms=("gpu",),
              loader=lazy("jattn.pallas.prefill", "attention"),
              check=_lazy_check("jattn.pallas.prefill"), priority=10, interpretable=True))
