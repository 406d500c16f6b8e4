"""The decode plan: how one decode step's keys are cut into units of work.

Made once per generation step (on the host from numpy lengths, or under jit from device
lengths) and reused by every layer's `jattn.decode(..., plan=plan)`, as FlashInfer's
plan/run split. It lives apart from the kernel so that `import jattn` does not import
Pallas; `jattn/pallas/decode.py` describes how the kernel consumes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_NUM_SMS = 132          # H100 SXM; used when the device cannot be asked
WAVE_CHOICES = (1, 2, 4)       # `waves=None`: the plan takes the best of these splits
CTA_COST_TILES = 2             # a CTA's fixed cost in the split estimate, in 64-key tiles


def block_kv(page_size: int) -> Optional[int]:
  """Keys per tile: 64, made of whole pages (page_size divides 64) or cut from one page
  (64 divides page_size); None for other page sizes."""
  if page_size >= 1 and (64 % page_size == 0 or page_size % 64 == 0):
    return 64
  return None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodePlan:
  """Work split of one decode step, reusable by every layer of that step.

  units [U, 3] int32: (sequence, first tile, end tile) of each unit, sorted by
  sequence, every sequence at least one unit (an empty one for kv_len 0); rows past the
  real count are (-1, 0, 0) and do nothing.
  batch_units [B + 1] int32: sequence b owns units batch_units[b]:batch_units[b+1].
  block_kv (static): keys per tile; `decode` checks it matches the cache's pages.
  split (static): False when every sequence is one unit (known on the host only); the
  kernel then writes the output itself and no merge runs.
  work [U * num_kv_heads, 5] int32: one row per CTA, in dispatch order: (sequence, first
  tile, end tile, row of `units`, kv head). A host plan sorts by unit length, longest
  first (the GPU's in-order CTA dispatch then schedules longest-first and short units
  fill the last wave), kv-head-major among units of equal length (CTAs dispatched
  together read different sequences; the 8 heads of one unit together ran 6-8 % slower
  on an H100, decode run 4). A plan made under jit puts the real units first,
  kv-head-major in `units` order (a sort would cost launches), then the idle slots: the
  GPU dispatches CTAs in order, so no real unit waits behind idle ones.
  """

  units: Any
  batch_units: Any
  block_kv: int = dataclasses.field(metadata=dict(static=True))
  split: bool = dataclasses.field(default=True, metadata=dict(static=True))
  work: Any = None

  @property
  def max_units(self) -> int:
    return self.units.shape[0]


def default_num_sms() -> int:
  try:
    dev = jax.devices()[0]
    if dev.platform == "gpu":
      return int(dev.core_count)
  except Exception:  # noqa: BLE001  (no device information: use the H100 count)
    pass
  return DEFAULT_NUM_SMS


def plan_decode(kv_lens, page_size: int, num_q_heads: int, num_kv_heads: int,
                head_dim: int, *, max_kv_len: Optional[int] = None,
                num_sms: Optional[int] = None, ctas_per_sm: int = 2,
                waves: Optional[int] = None, min_unit_keys: int = 256,
                split: Optional[bool] = None) -> DecodePlan:
  """Split the decode step's keys into units of about equal work.

  kv_lens int32 [B]: numpy (the plan is computed on the host) or a jax array (also
  under jit). When the batch alone fills the GPU (B * num_kv_heads >= num_sms) and no
  sequence is much longer than the mean, every sequence is one unit (no split, no
  merge). Otherwise every sequence is cut into chunks of L tiles, L chosen so that
  `num_kv_heads * units` is about `waves` waves of `ctas_per_sm * num_sms` CTAs but no
  unit is shorter than `min_unit_keys`; a sequence's chunks are equal to within a tile.
  `waves=None` (the default) estimates the time of the splits for 1, 2 and 4 waves and
  takes the shortest: CTAs run longest first, so the time is about
  max(ceil(n_big / slots) * L, keys / slots) + cost * ceil(CTAs / slots) tiles, n_big the
  CTAs of at least L / 2 tiles (they come in whole rounds), keys / slots the even share,
  `CTA_COST_TILES` a CTA's fixed cost (H100, session 12: one wave beat four by 7 % on the
  harness's skewed batch and by 18 % on B2 S32768; four stay best where fewer would leave
  a nearly empty last round). That order is the host plan's; a plan made under jit keeps
  its units in sequence order, so there `waves=None` means 4 (with one wave, long units
  late in that order cost 9 % on the skewed batch). `split=True/False` forces either
  choice. The plan has `ceil(w * ctas_per_sm * num_sms / num_kv_heads) + B` unit slots,
  w the largest of the waves considered, a fixed size, so it can be made under jit.
  `num_q_heads` and `head_dim` are accepted for the uniform plan signature (the split
  depends on lengths and kv heads only).
  Pass the same kv_lens to `decode`: units must cover every key of every sequence.
  """
  del num_q_heads, head_dim
  bk = block_kv(page_size)
  if bk is None:
    raise ValueError(f"plan_decode: page_size {page_size} has no supported tile size")
  xp = np if isinstance(kv_lens, np.ndarray) else jnp
  num_sms = default_num_sms() if num_sms is None else num_sms
  lens = xp.asarray(kv_lens).astype(np.int32)
  B = lens.shape[0]
  hi = np.iinfo(np.int32).max if max_kv_len is None else max_kv_len
  lens = xp.clip(lens, 0, hi)
  H = max(num_kv_heads, 1)
  slots = ctas_per_sm * num_sms
  # (under jit the CTAs are not sorted longest first, which the estimate assumes: 4 there)
  cands = (waves,) if waves is not None else WAVE_CHOICES if xp is np else (4,)
  U = -(-max(cands) * slots // H) + B
  tiles = (lens + bk - 1) // bk                                        # [B]
  total = xp.sum(tiles)
  longest = xp.maximum(xp.max(tiles), 1)

  min_tiles = max(1, -(-min_unit_keys // bk))

  def unit_tiles(w):   # L for `w` waves of CTAs
    target = -(-w * slots // H)
    return xp.maximum(min_tiles, (total + target - 1) // target)

  def est_tiles(L_w):  # the time estimate above, in tiles (host plans only: numpy)
    chunks = np.maximum((tiles + L_w - 1) // L_w, 1)
    n_big = H * np.sum(np.where(2 * tiles >= chunks * L_w, chunks, 0))
    n_all = H * np.sum(chunks)
    rounds_big, rounds_all = -(-n_big // slots), -(-n_all // slots)   # CTA rounds on the slots
    return max(rounds_big * L_w, total * H / slots) + CTA_COST_TILES * rounds_all

  # One candidate unless the host chooses; ties keep the fewer waves.
  L = unit_tiles(min(cands, key=lambda w: est_tiles(unit_tiles(w))) if len(cands) > 1
                 else cands[0])
  if split is not True:
    whole = (B * num_kv_heads >= num_sms) & (2 * B * longest <= 3 * total)
    L = xp.where(whole | (split is False), longest, L)
  chunks = xp.maximum((tiles + L - 1) // L, 1)                          # [B]
  batch_units = xp.concatenate([xp.zeros((1,), np.int32),
                                xp.cumsum(chunks).astype(np.int32)])
  u = xp.arange(U, dtype=np.int32)
  b = xp.sum(batch_units[None, 1:] <= u[:, None], axis=1).astype(np.int32)
  active = u < batch_units[B]
  b = xp.minimum(b, B - 1)
  i = u - batch_units[b]
  n, c = tiles[b], chunks[b]
  units = xp.stack([xp.where(active, b, -1), xp.where(active, (i * n) // c, 0),
                    xp.where(active, ((i + 1) * n) // c, 0)], axis=1).astype(np.int32)
  cta = xp.arange(U * H, dtype=np.int32)
  if xp is np:   # longest first; then kv head, then unit (idle slots last)
    row, head = cta % U, cta // U
    size = np.where(units[:, 0] >= 0, units[:, 2] - units[:, 1], -1)
    order = np.lexsort((row, head, -size[row]))
    row, head = row[order], head[order]
  else:          # the n real units first, kv-head-major; then the idle slots
    n = batch_units[B]
    idle = cta - n * H
    m = xp.maximum(U - n, 1)
    row = xp.where(idle < 0, cta % xp.maximum(n, 1), n + idle % m)
    head = xp.where(idle < 0, cta // xp.maximum(n, 1), idle // m)
  work = xp.concatenate([units[row], row[:, None], head[:, None]], axis=1).astype(np.int32)
  is_split = True if xp is jnp else bool(np.max(chunks) > 1)
  return DecodePlan(jnp.asarray(units), jnp.asarray(batch_units), bk, is_split,
                    jnp.asarray(work))
