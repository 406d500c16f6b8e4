"""The standard workloads: shapes, their FLOP and byte counts, and their inputs.

Kinds (one suite each): "prefill" (dense forward attention, T == S), "decode" (one query
per sequence against a paged cache), "append" (a chunk of new queries onto a cached
prefix, bottom-right causal), "bwd" (forward + backward of dense attention), "mla"
(absorbed multi-head latent attention decode over a paged latent cache: D = 512 + 64
latent + rope dims per key, the first Dv = 512 of them also the value) and "block_sparse"
(non-causal attention over a random per-head block layout of a given density).
A workload with `fp8` is the float8_e4m3fn twin of the bf16 workload named without the
`_fp8` suffix: decode reads float8 pages (bf16 queries), prefill takes float8 q, k, v; the
values are the bf16 ones rounded to e4m3 with scales of 1 (N(0, 1) data is inside the
e4m3 range), so the checks compare with the same float32 reference on the stored values.

Counting (the same for every implementation of a workload, so GB/s and TFLOP/s compare):
  FLOPs  forward 2 * Nq * (D + Dv) per visible (query, key) pair; causal and window masks
         count only visible pairs (causal T == S: about half; block-sparse: the listed
         blocks); backward 2.5x forward, so fwd+bwd is 3.5x (FlashAttention's convention).
  bytes  Q + K + V + O, each read or written once at its own width (float8: 1 byte);
         K and V only over valid tokens
         (sum of kv lengths for skewed decode; MLA reads one D-wide latent row per token
         that serves as key and value); bwd adds dO, dQ, dK, dV.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# Input rotation and page tables are shared with jattn.bench (one definition of each).
from jattn import block_sparse
from jattn.bench.definitions import shuffled_page_table
from jattn.bench.timing import L2_BYTES, MAX_INPUT_SETS, num_input_sets  # noqa: F401

DTYPE = jnp.bfloat16
PAGE_SIZE = 16               # pages of the paged form of workloads that name none (jattn.prefill)


@dataclasses.dataclass(frozen=True)
class Workload:
  name: str
  kind: str                    # prefill | decode | append | bwd
  batch: int
  q_len: int                   # new queries per sequence (1 for decode)
  kv_len: int                  # keys per sequence (the maximum for skewed lengths)
  num_q_heads: int
  num_kv_heads: int
  head_dim: int
  causal: bool = True
  window: Optional[int] = None  # sliding window (left; right = 0)
  page_size: Optional[int] = None
  skewed: bool = False          # decode lengths from a long-tailed distribution
  mean_len: Optional[int] = None
  head_dim_v: Optional[int] = None  # Dv when it differs from D (MLA: 512 of D = 576)
  density: Optional[float] = None   # block_sparse: fraction of listed blocks per row
  block: Optional[int] = None       # block_sparse: square block size
  fp8: bool = False                 # float8_e4m3fn K/V (prefill: and Q), scales of 1

  @property
  def twin(self) -> Optional[str]:
    """The bf16 workload an fp8 one is compared with (same shape)."""
    return self.name[:-len("_fp8")] if self.fp8 else None

  @property
  def dv(self) -> int:
    return self.head_dim_v or self.head_dim

  @property
  def suite(self) -> str:
    return self.kind

  @property
  def pages(self) -> int:
    """Page size of the paged form of this workload."""
    return self.page_size or PAGE_SIZE

  @property
  def group(self) -> int:
    return self.num_q_heads // self.num_kv_heads

  @property
  def sm_scale(self) -> float:
    if self.kind == "mla":  # DeepSeek-V3 scales by the un-absorbed head dim, 128 + 64
      return 1.0 / math.sqrt(192)
    return 1.0 / math.sqrt(self.head_dim)

  def kv_lens(self) -> np.ndarray:
    """int32 [B] valid kv length of each sequence (deterministic)."""
    if not self.skewed:
      return np.full((self.batch,), self.kv_len, np.int32)
    return skewed_lengths(self.batch, self.mean_len, self.kv_len)

  def shape(self) -> dict:
    d = dict(B=self.batch, T=self.q_len, S=self.kv_len, Nq=self.num_q_heads,
             Nkv=self.num_kv_heads, D=self.head_dim)
    if self.head_dim_v:
      d["Dv"] = self.head_dim_v
    if self.kind == "block_sparse":
      d.update(block=self.block, density=self.density)
    if self.kind in ("prefill", "append", "bwd"):
      d["mask"] = ("causal" if self.causal else "none") + (f"+window{self.window}" if self.window else "")
    if self.page_size:
      d["page"] = self.page_size
    if self.skewed:
      lens = self.kv_lens()
      d["lens"] = f"mean {lens.mean():.0f} max {lens.max()}"
    return d

  def shape_str(self) -> str:
    return " ".join(f"{k}={v}" for k, v in self.shape().items())

  # ---------------------------------------------------------------- counts
  def block_mask(self) -> np.ndarray:
    """block_sparse: bool [Nq, T/block, S/block], exactly round(density * S/block) random
    key blocks in every query-block row of every head (`jattn.block_sparse.random_layout`,
    seed 0: every run and every implementation sees the same layout)."""
    return _random_mask(self.num_q_heads, self.q_len, self.kv_len, self.block, self.density)

  def visible_pairs(self) -> int:
    """Visible (query, key) pairs summed over the batch (bottom-right aligned); for
    block_sparse, summed over the heads as well (the layout differs per head)."""
    if self.kind == "block_sparse":
      return self.batch * int(self.block_mask().sum()) * self.block ** 2
    total = 0
    for s_len in self.kv_lens():
      s_len = int(s_len)
      t = np.arange(self.q_len)
      p = s_len - self.q_len + t                      # absolute query positions
      hi = np.minimum(p, s_len - 1) if self.causal else np.full_like(p, s_len - 1)
      lo = np.maximum(p - self.window, 0) if self.window is not None else np.zeros_like(p)
      total += int(np.maximum(hi - lo + 1, 0).sum())
    return total

  def flops(self) -> float:
    heads = 1 if self.kind == "block_sparse" else self.num_q_heads  # summed in the pairs
    fwd = 2.0 * heads * (self.head_dim + self.dv) * self.visible_pairs()
    return 3.5 * fwd if self.kind == "bwd" else fwd

  def bytes(self) -> float:
    it = jnp.dtype(DTYPE).itemsize
    kv_it = 1 if self.fp8 else it
    q_it = 1 if self.fp8 and self.kind == "prefill" else it
    rows = self.batch * self.q_len * self.num_q_heads
    tokens = int(self.kv_lens().sum()) * self.num_kv_heads
    kv = tokens * self.head_dim if self.kind == "mla" else tokens * (self.head_dim + self.dv)
    fwd = rows * (self.head_dim * q_it + self.dv * it) + kv * kv_it
    return 2 * fwd if self.kind == "bwd" else fwd


@functools.lru_cache(maxsize=None)
def _random_mask(heads: int, T: int, S: int, block: int, density: float) -> np.ndarray:
  return np.asarray(block_sparse.random_layout(heads, T, S, block, density, seed=0).block_mask)


def skewed_lengths(batch: int, mean: int, max_len: int, seed: int = 0) -> np.ndarray:
  """Long-tailed lengths with mean ~`mean`: one sequence of exactly `max_len` (it alone
  dominates a naive split over sequences) and the rest lognormal (sigma 1.2), scaled so
  that the whole batch averages `mean`, clipped to [16, max_len]."""
  rng = np.random.default_rng(seed)
  x = rng.lognormal(0.0, 1.2, batch - 1)
  rest_mean = max(16.0, (mean * batch - max_len) / (batch - 1))
  lens = np.clip(np.round(x / x.mean() * rest_mean), 16, max_len).astype(np.int32)
  lens = np.insert(lens, int(rng.integers(0, batch)), max_len).astype(np.int32)
  return lens


STANDARD = [
    Workload("prefill_causal_b4_t4096_h32_d128", "prefill", 4, 4096, 4096, 32, 32, 128),
    Workload("prefill_causal_b1_t8192_h32_d128", "prefill", 1, 8192, 8192, 32, 32, 128),
    Workload("prefill_causal_gqa32x8_b4_t4096_d128", "prefill", 4, 4096, 4096, 32, 8, 128),
    Workload("prefill_causal_b4_t4096_h16_d256", "prefill", 4, 4096, 4096, 16, 16, 256),
    Workload("prefill_causal_b4_t4096_h32_d64", "prefill", 4, 4096, 4096, 32, 32, 64),
    Workload("decode_gqa32x8_b32_s4096_d128_p16", "decode", 32, 1, 4096, 32, 8, 128,
             page_size=16),
    Workload("decode_gqa32x8_b128_s2048_d128_p16", "decode", 128, 1, 2048, 32, 8, 128,
             page_size=16),
    Workload("decode_mha32_b32_s4096_d128_p16", "decode", 32, 1, 4096, 32, 32, 128,
             page_size=16),
    Workload("decode_skewed_lengths", "decode", 64, 1, 32768, 32, 8, 128, page_size=16,
             skewed=True, mean_len=2048),
    Workload("append_b8_q256_kv4096_gqa32x8", "append", 8, 256, 4096 + 256, 32, 8, 128,
             page_size=16),
    Workload("attention_bwd_causal_b4_t4096_h32_d128", "bwd", 4, 4096, 4096, 32, 32, 128),
    # beyond the list: sliding window and non-causal prefill
    Workload("prefill_window1024_b1_t8192_h32_d128", "prefill", 1, 8192, 8192, 32, 32, 128,
             window=1024),
    Workload("prefill_noncausal_b4_t4096_h32_d128", "prefill", 4, 4096, 4096, 32, 32, 128,
             causal=False),
    # MLA (issue 7): DeepSeek-V3 shapes (128 heads, compute-bound) and a TP-8 slice (16
    # heads, memory-bound); latent 512 + rope 64, page 64.
    Workload("mla_decode_b64_s4096_h128_p64", "mla", 64, 1, 4096, 128, 1, 576,
             page_size=64, head_dim_v=512),
    Workload("mla_decode_b128_s8192_h16_p64", "mla", 128, 1, 8192, 16, 1, 576,
             page_size=64, head_dim_v=512),
    # Block-sparse (issue 8): B1 T=S=8192, 32 heads, 64x64 blocks, non-causal.
    *[Workload(f"block_sparse_t8192_h32_d128_b64_density{d}", "block_sparse", 1, 8192, 8192,
               32, 32, 128, causal=False, density=d, block=64) for d in (0.1, 0.3, 0.5)],
    # float8 (issues 4 and 6): twins of the first prefill and decode workloads, measured
    # against their bf16 rows of the same run.
    Workload("prefill_causal_b4_t4096_h32_d128_fp8", "prefill", 4, 4096, 4096, 32, 32, 128,
             fp8=True),
    Workload("decode_gqa32x8_b32_s4096_d128_p16_fp8", "decode", 32, 1, 4096, 32, 8, 128,
             page_size=16, fp8=True),
]


def tiny(wl: Workload) -> Workload:
  """The same workload scaled down for the CPU test (names kept, shapes tiny)."""
  g = wl.group
  nkv = 2 if g > 1 else 4
  d = max(16, wl.head_dim // 4)
  kw = dict(num_q_heads=nkv * min(g, 2), num_kv_heads=nkv, head_dim=d)
  if wl.kind == "mla":
    return dataclasses.replace(wl, batch=2, kv_len=64, num_q_heads=4, head_dim=80,
                               head_dim_v=64, page_size=8)
  if wl.kind == "block_sparse":
    return dataclasses.replace(wl, q_len=128, kv_len=128, num_q_heads=4, num_kv_heads=4,
                               head_dim=32, block=32)
  if wl.kind == "decode":
    kw.update(batch=min(wl.batch, 4), kv_len=256 if wl.skewed else 64, page_size=8,
              mean_len=48 if wl.skewed else None)
  elif wl.kind == "append":
    kw.update(batch=2, q_len=16, kv_len=64, page_size=8)
  else:
    kw.update(batch=min(wl.batch, 2), q_len=64, kv_len=64,
              window=16 if wl.window else None)
  return dataclasses.replace(wl, **kw)


# ---------------------------------------------------------------------- inputs

F8 = jnp.float8_e4m3fn


def _normal(key, shape, fp8=False):
  """bf16 N(0, 1) values; fp8: those values rounded to e4m3 (stored with scale 1)."""
  x = jax.random.normal(key, shape, jnp.float32).astype(DTYPE)
  return x.astype(F8) if fp8 else x


@functools.partial(jax.jit, static_argnums=(0,))
def _dense_set(wl: Workload, key) -> dict:
  kq, kk, kv, kd = jax.random.split(key, 4)
  d = dict(q=_normal(kq, (wl.batch, wl.q_len, wl.num_q_heads, wl.head_dim), wl.fp8),
           k=_normal(kk, (wl.batch, wl.kv_len, wl.num_kv_heads, wl.head_dim), wl.fp8),
           v=_normal(kv, (wl.batch, wl.kv_len, wl.num_kv_heads, wl.head_dim), wl.fp8))
  if wl.kind == "bwd":
    d["do"] = _normal(kd, d["q"].shape)
  return d


def dense_inputs(wl: Workload, key, n_sets: int) -> list[dict]:
  """Dense q [B,T,Nq,D], k/v [B,S,Nkv,D] (and dO for bwd), `n_sets` independent sets."""
  return [_dense_set(wl, k) for k in jax.random.split(key, n_sets)]


@functools.partial(jax.jit, static_argnums=(0, 1))
def decode_set(wl: Workload, num_pages: int, key) -> tuple:
  """Random q [B,Nq,D] (bf16) and pages [P,ps,Nkv,D] for K and V (float8 for fp8)."""
  kq, kk, kv = jax.random.split(key, 3)
  shape = (num_pages, wl.pages, wl.num_kv_heads, wl.head_dim)
  return (_normal(kq, (wl.batch, wl.num_q_heads, wl.head_dim)), _normal(kk, shape, wl.fp8),
          _normal(kv, shape, wl.fp8))


@functools.partial(jax.jit, static_argnums=(0, 1))
def mla_set(wl: Workload, num_pages: int, key) -> dict:
  """Random q_nope [B,H,Dv], q_pe [B,H,D-Dv], ckv pages [P,ps,Dv], kpe pages [P,ps,D-Dv]."""
  kq, kr, kc, kp = jax.random.split(key, 4)
  B, H, Dv, Dr = wl.batch, wl.num_q_heads, wl.dv, wl.head_dim - wl.dv
  return dict(q_nope=_normal(kq, (B, H, Dv)), q_pe=_normal(kr, (B, H, Dr)),
              ckv=_normal(kc, (num_pages, wl.pages, Dv)), kpe=_normal(kp, (num_pages, wl.pages, Dr)))


def page_table(wl: Workload, seed: int = 1):
  """Shuffled page table int32 [B, max_pages] and the number of pages P. Sequence b's
  first ceil(len_b / page_size) entries are its own pages, in a random order over the
  cache; the rest of its row points at random (valid) pages that must not be read."""
  table, num_pages = shuffled_page_table(wl.kv_lens(), wl.kv_len, wl.pages, seed)
  return jnp.asarray(table), num_pages


def to_pages(x, table, num_pages: int, page_size: int):
  """Scatter dense [B,S,N,D] (S a multiple of page_size) into pages [P,ps,N,D]."""
  B, S, N, D = x.shape
  m = S // page_size
  pages = jnp.zeros((num_pages, page_size, N, D), x.dtype)
  return pages.at[table[:, :m].reshape(-1)].set(x.reshape(B * m, page_size, N, D))


def gather_dense(pages, table):
  """Pages [P,ps,N,D] -> dense [B, max_pages*ps, N, D] through the table."""
  x = pages[table]
  B, M, ps = x.shape[:3]
  return x.reshape(B, M * ps, *x.shape[3:])
