"""A few results remembered by the identity of the objects they were computed from.

Dispatch-time checks (`variants.kernel_trace_reason`, `block_sparse.layout_digest`) run
on every call; their inputs are user objects (functions, arrays) that are usually the same
objects call after call. An id can be reused once its object is gone, so an entry keeps
its objects alive and a hit requires the very same objects, not just equal ids."""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, Sequence


class IdentityMemo:
  """The last `size` results of `compute()`, keyed by the identities of `objs` and `key`."""

  def __init__(self, size: int):
    self.size = size
    self._entries: collections.OrderedDict = collections.OrderedDict()

  def get(self, objs: Sequence[Any], key: Hashable, compute: Callable[[], Any]) -> Any:
    full_key = (tuple(id(o) for o in objs), key)
    hit = self._entries.get(full_key)
    if hit is not None and all(a is b for a, b in zip(hit[0], objs)):
      self._entries.move_to_end(full_key)
      return hit[1]
    value = compute()
    self._entries[full_key] = (tuple(objs), value)
    self._entries.move_to_end(full_key)
    while len(self._entries) > self.size:
      self._entries.popitem(last=False)
    return value
