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

# Dense attention, paged prefill/append and ragged prefill: one Pallas Mosaic GPU kernel.
for _op in ("attention", "prefill", "prefill_ragged"):
  register(Impl(op=_op, name="pallas_mosaic", family="pallas", platforms=("gpu",),
                loader=lazy("jattn.pallas.prefill", _op),
                check=_lazy_check("jattn.pallas.prefill"), priority=10, interpretable=True))

# float8 attention: the CUDA FP8 kernels (sm_90a / sm_100a, nvcc JIT) first; elsewhere
# "xla_fp8" dequantizes and runs the reference (it passes non-float8 calls over).
register(Impl(op="attention", name="cuda_fp8", family="cuda", platforms=("gpu",),
              loader=lazy("jattn.ffi.fp8", "attention"),
              check=_lazy_check("jattn.ffi.fp8", "supports_attention"), priority=20))
register(Impl(op="attention", name="xla_fp8", family="xla", platforms=("cpu", "gpu", "tpu"),
              loader=lazy("jattn.xla_fp8", "attention"), check=_lazy_check("jattn.xla_fp8"),
              priority=1))
register(Impl(op="decode", name="cuda_fp8", family="cuda", platforms=("gpu",),
              loader=lazy("jattn.ffi.fp8", "decode"),
              check=_lazy_check("jattn.ffi.fp8", "supports_decode"), priority=20))

# Paged decode (split-K with a plan) and merge_states: Pallas Mosaic GPU kernels.
register(Impl(op="decode", name="pallas_mosaic", family="pallas", platforms=("gpu",),
              loader=lazy("jattn.pallas.decode", "decode"),
              check=_lazy_check("jattn.pallas.decode"), priority=10, interpretable=True))
register(Impl(op="merge_states", name="pallas_mosaic", family="pallas", platforms=("gpu",),
              loader=lazy("jattn.pallas.merge", "merge_states"),
              check=_lazy_check("jattn.pallas.merge"), priority=10, interpretable=True))

# Absorbed MLA over a paged latent cache: Pallas Mosaic GPU kernel (bf16/fp16 caches;
# float8 latent caches stay on xla, its `supports` says so).
register(Impl(op="mla_decode", name="pallas_mosaic", family="pallas", platforms=("gpu",),
              loader=lazy("jattn.pallas.mla", "mla_decode"),
              check=_lazy_check("jattn.pallas.mla"), priority=10, interpretable=True))

# Block-sparse attention: the prefill kernels iterating per-(head, q tile) kv-tile lists
# (fixed blocks that are multiples of 64; other layouts stay on xla, `supports` says so).
register(Impl(op="block_sparse_attention", name="pallas_mosaic", family="pallas",
              platforms=("gpu",), loader=lazy("jattn.pallas.block_sparse", "block_sparse_attention"),
              check=_lazy_check("jattn.pallas.block_sparse"), priority=10, interpretable=True))
