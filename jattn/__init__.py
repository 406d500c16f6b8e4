"""jattn: attention kernels for JAX (FlashInfer for JAX).

Public API (`__all__`): the ops `attention`, `decode`, `prefill`, `prefill_ragged`,
`merge_states`, `append_kv`, `mla_decode`, `mla_append`, `block_sparse_attention`,
`ring_attention`; the plans `plan_decode` / `DecodePlan` and `plan_block_sparse` /
`BlockSparsePlan`; `PagedKVCache`; `Variant`, `Context`, `compose` and the modules
`variants`, `block_sparse`, `ring`, `sharding`; `implementations`; `bench` / `apply`
(tuning traces). `jattn.flax` (Flax attention_fn and module) imports on first use, so
flax is needed only there. See README.md.
"""

from jattn import block_sparse, reference, variants
from jattn.api import (append_kv, attention, block_sparse_attention, decode, merge_states, mla_append, mla_decode,
                       prefill, prefill_ragged)
from jattn.cache import PagedKVCache
from jattn.dispatch import implementations
from jattn.plan import DecodePlan, plan_decode
from jattn.block_sparse import BlockSparsePlan, plan as plan_block_sparse
from jattn.variants import Context, Variant, compose
from jattn import ring, sharding
from jattn.ring import ring_attention
from jattn.sharding import ShardingError
from jattn import bench
from jattn.bench import apply

__version__ = "0.1.0"


def __getattr__(name):
  if name == "flax":     # on first use: `import jattn` does not need flax
    import importlib
    return importlib.import_module("jattn.flax")
  raise AttributeError(f"module 'jattn' has no attribute {name!r}")


__all__ = [
    "attention", "decode", "prefill", "prefill_ragged", "merge_states", "append_kv",
    "mla_decode", "mla_append", "block_sparse_attention", "block_sparse",
    "PagedKVCache", "Variant", "Context", "compose", "variants", "implementations",
    "plan_decode", "DecodePlan", "plan_block_sparse", "BlockSparsePlan",
    "ring_attention", "ring", "sharding", "ShardingError",
    "bench", "apply",
]
