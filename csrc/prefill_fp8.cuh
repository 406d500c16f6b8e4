// FP8 attention (prefill): e4m3 Q, K, V with float32 per-head scales, bf16 output, lse.
//
// Layouts (BTNH, as jattn.attention):
//   q  [B, T, Nq, D]   e4m3      k [B, S, Nkv, D] e4m3
//   vt [B, Nkv, D, Sp] e4m3: V transposed by transpose_v_kernel (below), keys contiguous,
//      and inside each group of 32 keys permuted by `key_of_slot`, Sp = S rounded up to
//      128 (zeros past S). The transpose runs on JATTN_VT_CTAS SMs while the attention
//      kernel runs on the others; a (batch, kv head)'s V^T is read once its count is full.
//   q_scale [Nq], k_scale [Nkv], v_scale [Nkv] float32 (real value = stored * scale)
//   o  [B, T, Nq, D] bf16, lse [B, T, Nq] float32 (natural log; -inf for empty rows)
// Query head h reads kv head h / (Nq / Nkv). Causal is bottom-right aligned: query t
// sees key s iff s <= t + S - T.
//
// Math per row: x_j = (q.k_j) * sm_scale * q_scale * k_scale * log2(e); online softmax in
// base 2 with an exponent offset kPBias (6), p = 2^(x - m + kPBias), which keeps small p
// out of e4m3's subnormal range for 6 more binades when p is cast to e4m3 for the P.V
// product. m is a running max raised lazily: only when a block's max exceeds it by more
// than kRescaleTau (2.75), so most blocks skip O's rescale and p stays <= 2^8.75 < 448
// (below). l sums the same e4m3 p that P.V multiplies (the tensor cores sum each block: P
// times a tile of ones beside each P.V step; the blocks' sums add up in float32), so o's
// weights sum to one and (o, lse) describe the same p;
// o = v_scale * (P.V) / l, lse = (m + log2 l - kPBias) * ln 2. Against the exact softmax, l
// is off by the rounding of p to e4m3 (at most 6.25 % per term; ~3 % on random data).
//
// A tile = 128 query rows of one (batch, head). The kernel is persistent: one CTA per SM
// loops over tiles, handed out in head-major, longest-first order (the first by
// blockIdx.x, the rest from an atomic counter), so a few heads' K/V stay in L2.
// Warpgroup 0 is the producer: one thread fetches the next tile, publishes it (index and
// scales) in a Q slot (Q_SLOTS of them) and issues TMA loads of its Q and of the K / V^T
// blocks (V^T once the transpose has counted the pair complete) into a STAGES-deep ring,
// running ahead of the consumers across tiles (the next tile's loads overlap the current
// tile's last P.V and epilogue). Warpgroups 1 and 2 each own 64 rows of a tile. In its
// turn (ping-pong through named barriers 1 and 2; the turns continue across tiles) a
// consumer issues S_j = Q K_j^T, waits for it, issues O += P_{j-1} V_{j-1} and hands the
// turn over; then it runs the softmax of S_j while its own P.V and the other consumer's
// GEMMs use the tensor cores. KV blocks are visited from the last (diagonal, masked) to
// the first. O leaves through shared memory by TMA stores.
//
// The GEMMs come in two flavours sharing everything else (the accumulator layouts agree):
//   JATTN_WGMMA=1 (sm_90a): wgmma.m64nNk32 e4m3 (QGMMA), A = Q from shared memory for S,
//                           A = P from registers for O; B from shared memory.
//   JATTN_WGMMA=0 (sm_100a, or forced): mma.sync.m16n8k32 e4m3 per warp, fragments read
//                           from the same swizzled shared-memory tiles. On sm_90/sm_100
//                           ptxas lowers it to f16 HMMA plus conversions (no fp8 rate).
#pragma once

#include "common.cuh"
#if JATTN_WGMMA
#include "wgmma_fp8.cuh"
#endif

namespace jattn {

// Within a group of 32 keys, P's register slot k (the k index of the A fragment) holds
// the probability of key key_of_slot(k): the softmax accumulator layout packs without
// shuffles, and V^T's columns are stored in slot order to match.
__host__ __device__ constexpr int key_of_slot(int k) {
  return (k & 16) + 8 * ((k >> 1) & 1) + 2 * ((k >> 2) & 3) + (k & 1);
}

// Lazy rescaling: a row's running max m is raised only when a block's max exceeds it by
// more than kRescaleTau (base 2); otherwise m stays and that block's p may reach
// 2^(kPBias + kRescaleTau), which must stay within e4m3's 448. A warp rescales its o and l
// only when one of its 16 rows raised m (simulated on the benchmark's data: 11 % of
// warp-blocks, against 79 % when every rise rescales). The softmax is the same (o and l
// share m). The offset is an integer, so the p of the key that sets m is exactly 2^kPBias
// (a fractional offset cost 30-60 % more error on peaked rows), and it is 6, not lower,
// because keys more than (10 + kPBias) ln 2 nats below m round to zero in e4m3 (attention
// sinks met first: benchmarks/NOTES.md, "Session 14").
#ifndef JATTN_P_BIAS
#define JATTN_P_BIAS 6.f
#endif
#ifndef JATTN_RESCALE_TAU
#define JATTN_RESCALE_TAU 2.75f
#endif
constexpr float kPBias = JATTN_P_BIAS;
constexpr float kRescaleTau = JATTN_RESCALE_TAU;
static_assert(kPBias + kRescaleTau <= 8.75f, "p must stay below e4m3's 448");

template <int D_> struct PrefillConfig {
  static constexpr int D = D_;
  static constexpr int BM = 128;                  // query rows per CTA
  static constexpr int BN = D <= 128 ? 128 : 64;  // keys per block
  static constexpr int STAGES = 4;  // K/V ring depth: a TMA load has 3 blocks of lead
  static constexpr int Q_SLOTS = D <= 128 ? 2 : 1;  // D256: one, to fit the O staging
  static constexpr int QK_PANEL = D < 128 ? D : 128;  // swizzle width of Q / K rows (bytes)
  static constexpr int V_PANEL = BN;                  // V^T rows are BN bytes (<= 128)
  static constexpr int Q_BYTES = BM * D;
  static constexpr int K_BYTES = BN * D;
  static constexpr int V_BYTES = D * BN;
  static constexpr int O_PANEL = 128;               // bytes: 64 bf16 columns per TMA box
  static constexpr int O_WG_BYTES = 64 * D * 2;     // one consumer's 64 rows of bf16 O
  static constexpr int THREADS = 384;
  static constexpr int ONES_BYTES = 1024;         // e4m3 1.0: the B operand of the row sums
  static constexpr int SMEM = Q_SLOTS * Q_BYTES + STAGES * (K_BYTES + V_BYTES) +
                              2 * O_WG_BYTES + ONES_BYTES + 1024 /*align*/ + 64 * 8 /*barriers*/;
};

struct PrefillParams {
  __nv_bfloat16* o;
  float* lse;
  const float* q_scale;
  const float* k_scale;
  const float* v_scale;
  int* tile_counter;  // zero at launch: tiles handed out after each CTA's first
  const int* vt_ready;  // [B * Nkv] V^T units written per (batch, kv head), zero at launch
  int vt_units;         // units per (batch, kv head): Sp / kVtKeys
  int B, T, S, Nq, Nkv;
  int m_blocks, num_tiles;  // m_blocks = ceil(T / BM); num_tiles = B * Nq * m_blocks
  float sm_scale;
};

// Tile t: (b, hq) = divmod(t / m_blocks, Nq), query rows from m0 = BM * (m_blocks - 1 -
// t % m_blocks); n_blocks KV blocks of BN keys (causal: up to the diagonal).
struct Tile {
  int m0, hq, hk, b, n_blocks;
};

template <class C, bool CAUSAL>
__device__ __forceinline__ Tile tile_of(int t, const PrefillParams& prm) {
  Tile x;
  const int hb = t / prm.m_blocks;
  x.m0 = (prm.m_blocks - 1 - t % prm.m_blocks) * C::BM;
  x.hq = hb % prm.Nq;
  x.b = hb / prm.Nq;
  x.hk = x.hq / (prm.Nq / prm.Nkv);
  int kv_end = prm.S;
  if (CAUSAL) kv_end = min(kv_end, max(0, x.m0 + C::BM + prm.S - prm.T));  // bottom-right
  x.n_blocks = (kv_end + C::BN - 1) / C::BN;
  return x;
}

// Byte offset of (row, col) in a tile of `rows` rows stored as column panels of `panel`
// bytes with the TMA swizzle of that width (Swizzle<3,4,3> for 128, <2,4,3> for 64).
template <int PANEL>
__device__ __forceinline__ uint32_t tile_offset(int rows, int row, int col) {
  uint32_t lin = (col / PANEL) * rows * PANEL + row * PANEL + (col % PANEL);
  constexpr uint32_t mask = PANEL == 128 ? 7 : 3;
  return lin ^ (((lin >> 7) & mask) << 4);
}

// wgmma descriptors of the dynamic shared memory's start (`base`) in the swizzles of Q / K
// (QK_PANEL bytes), of V^T (V_PANEL) and of the ones tile (128): every operand's descriptor
// is one of these plus its offset (desc_at), computed once per kernel.
struct SmemDescs {
  const uint8_t* base;
  uint64_t qk, v, ones;
};

// S[64 x BN] (this warpgroup's rows) = Q K^T, into the wgmma accumulator layout.
template <class C>
__device__ __forceinline__ void gemm_qk(float (&s)[C::BN / 2], const uint8_t* q_tile,
                                        const uint8_t* k_tile, int wg_row0,
                                        const SmemDescs& sd) {
#if JATTN_WGMMA
#pragma unroll
  for (int kk = 0; kk < C::D / 32; ++kk) {
    const int panel = kk * 32 / C::QK_PANEL, col = kk * 32 % C::QK_PANEL;
    uint64_t da = desc_at(sd.qk, sd.base, q_tile + panel * C::BM * C::QK_PANEL +
                                              wg_row0 * C::QK_PANEL + col);
    uint64_t db = desc_at(sd.qk, sd.base, k_tile + panel * C::BN * C::QK_PANEL + col);
    Wgmma<C::BN>::ss(s, da, db, kk > 0);
  }
#else
  const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
  const int g = lane / 4, t = lane % 4;
  const int r0 = wg_row0 + warp * 16 + g;
#pragma unroll
  for (int i = 0; i < C::BN / 2; ++i) s[i] = 0.f;
#pragma unroll
  for (int kk = 0; kk < C::D / 32; ++kk) {
    uint32_t a[4];
    const int c0 = kk * 32 + 4 * t;
    a[0] = *(const uint32_t*)(q_tile + tile_offset<C::QK_PANEL>(C::BM, r0, c0));
    a[1] = *(const uint32_t*)(q_tile + tile_offset<C::QK_PANEL>(C::BM, r0 + 8, c0));
    a[2] = *(const uint32_t*)(q_tile + tile_offset<C::QK_PANEL>(C::BM, r0, c0 + 16));
    a[3] = *(const uint32_t*)(q_tile + tile_offset<C::QK_PANEL>(C::BM, r0 + 8, c0 + 16));
#pragma unroll
    for (int nt = 0; nt < C::BN / 8; ++nt) {
      uint32_t b0 = *(const uint32_t*)(k_tile + tile_offset<C::QK_PANEL>(C::BN, nt * 8 + g, c0));
      uint32_t b1 =
          *(const uint32_t*)(k_tile + tile_offset<C::QK_PANEL>(C::BN, nt * 8 + g, c0 + 16));
      mma_e4m3_16832(*reinterpret_cast<float(*)[4]>(&s[nt * 4]), a, b0, b1);
    }
  }
#endif
}

// O[64 x D] += P[64 x BN] V[BN x D]; P in registers (e4m3 A fragments), V^T tile [D x BN].
// And this block's row sums lblk = P . ones[BN x 8], from zero: every column of that n8
// accumulator is the sum of its row of P (lblk[0]: row g, lblk[2]: row g + 8). The caller
// adds them to float32 row sums: the FP8 wgmma adds into its accumulator with ~14
// mantissa bits, truncating, so a sum carried across the row lost its small terms (l 7-12 %
// low on 8192-key rows, NOTES "Session 14").
template <class C>
__device__ __forceinline__ void gemm_pv(float (&o)[C::D / 2], float (&lblk)[4],
                                        const uint32_t (&p)[C::BN / 32][4],
                                        const uint8_t* v_tile, const SmemDescs& sd) {
#if JATTN_WGMMA
#pragma unroll
  for (int kk = 0; kk < C::BN / 32; ++kk) {
    uint64_t db = desc_at(sd.v, sd.base, v_tile + kk * 32);
    Wgmma<C::D>::rs(o, p[kk], db, 1);
    Wgmma<8>::rs(lblk, p[kk], sd.ones, kk > 0);
  }
#else
  lblk[0] = lblk[1] = lblk[2] = lblk[3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < C::BN / 32; ++kk) mma_e4m3_16832(lblk, p[kk], 0x38383838u, 0x38383838u);
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int kk = 0; kk < C::BN / 32; ++kk) {
    const int c0 = kk * 32 + 4 * t;
#pragma unroll
    for (int dt = 0; dt < C::D / 8; ++dt) {
      uint32_t b0 = *(const uint32_t*)(v_tile + tile_offset<C::V_PANEL>(C::D, dt * 8 + g, c0));
      uint32_t b1 =
          *(const uint32_t*)(v_tile + tile_offset<C::V_PANEL>(C::D, dt * 8 + g, c0 + 16));
      mma_e4m3_16832(*reinterpret_cast<float(*)[4]>(&o[dt * 4]), p[kk], b0, b1);
    }
  }
#endif
}

template <class C>
__device__ __forceinline__ void issue_fence(float (&s)[C::BN / 2], float (&o)[C::D / 2],
                                            float (&lblk)[4]) {
#if JATTN_WGMMA
  fence_regs(s);
  fence_regs(o);
  fence_regs(lblk);
  wgmma_fence();
#endif
}

// Commit the issued wgmmas as one group; wait until none is pending and fence the
// accumulators; both.
template <class C> __device__ __forceinline__ void commit_group() {
#if JATTN_WGMMA
  wgmma_commit();
#endif
}

template <class C>
__device__ __forceinline__ void wait_groups(float (&s)[C::BN / 2], float (&o)[C::D / 2],
                                            float (&lblk)[4]) {
#if JATTN_WGMMA
  wgmma_wait<0>();
  fence_regs(s);
  fence_regs(o);
  fence_regs(lblk);
#endif
}

template <class C>
__device__ __forceinline__ void commit_and_wait(float (&s)[C::BN / 2], float (&o)[C::D / 2],
                                                float (&lblk)[4]) {
  commit_group<C>();
  wait_groups<C>(s, o, lblk);
}

// V [B, S, Nkv, D] -> vt [B, Nkv, D, Sp], the layout above, in units of kVtKeys keys of
// one (batch, kv head), each handled by a group of 256 threads. The unit's V rows arrive
// by TMA (box: kVtKeys keys x D bytes, swizzled column panels of VtPanel<D> bytes, zeros
// past S) in a kVtStages-deep ring per group, issued kVtStages units ahead by the group's
// first thread. A warp unit is 16 keys x 4 bytes of D per lane, read from the staged rows
// (a warp reads 32 words of one row: no bank conflicts) and permuted with PRMT into
// 16-key pieces of 4 rows of V^T, which go to the group's out tile (row d: 128 bytes,
// 16-byte chunk c at c ^ (d % 8); lane pairs start at rotated rows, so 8 lanes store to 8
// chunks: no bank conflicts); the group then writes the tile out in whole rows.
constexpr int kVtKeys = 128;
constexpr int kVtStages = 2;
#ifndef JATTN_VT_BATCH
#define JATTN_VT_BATCH 2
#endif
constexpr int kVtBatch = JATTN_VT_BATCH;  // units whose counts one release raises
#ifndef JATTN_VT_CTAS
#define JATTN_VT_CTAS 16  // transpose CTAs; the attention kernel takes the other SMs meanwhile
#endif
template <int D> constexpr int VtPanel = D < 128 ? D : 128;    // bytes per staged row panel
template <int D> constexpr int VtGroups = D <= 128 ? 4 : 2;    // groups (units in flight) per CTA
template <int D> constexpr int VtGroupBytes = (kVtStages + 1) * D * kVtKeys;  // ring + out tile
template <int D> constexpr int VtSmem = VtGroups<D> * VtGroupBytes<D> + 1024 + 64;

template <int D, class Release>
__device__ __forceinline__ void transpose_unit(const uint8_t* staged, uint8_t* tile,
                                               uint8_t* __restrict__ vt, int Sp, int Nkv,
                                               int k0, int hk, int b, int tid, int bar,
                                               Release release) {
  constexpr int WPR = D / 4;            // 32-bit words per key row
  constexpr int LW = WPR < 32 ? WPR : 32;  // lanes per group of 16 keys
  constexpr int KGW = 32 / LW;          // key groups per warp unit
  constexpr int KG_UNITS = kVtKeys / 16 / KGW, UNITS = KG_UNITS * (WPR / LW);
  const int warp = tid / 32, lane = tid % 32;
  const int dwl = lane % LW, kgs = lane / LW;
  const uint32_t rot = (lane >> 1) & 3;
  for (int u = warp; u < UNITS; u += 8) {
    const int kg = (u % KG_UNITS) * KGW + kgs;  // keys k0 + [16 kg, 16 kg + 16)
    const int dw = (u / KG_UNITS) * LW + dwl;   // D bytes [4 dw, 4 dw + 4)
    uint32_t w[16];                             // w[k]: the 4 bytes of key 16 kg + k
#pragma unroll
    for (int k = 0; k < 16; ++k)
      w[k] = *reinterpret_cast<const uint32_t*>(
          staged + tile_offset<VtPanel<D>>(kVtKeys, kg * 16 + k, dw * 4));
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t rr = (r + rot) & 3, sel = rr | ((rr + 4) << 4);
      const int d = dw * 4 + rr;
      uint32_t out[4];  // slots 4i .. 4i+3 hold keys 2i, 2i+1, 2i+8, 2i+9
#pragma unroll
      for (int i = 0; i < 4; ++i)
        out[i] = prmt(prmt(w[2 * i], w[2 * i + 1], sel), prmt(w[2 * i + 8], w[2 * i + 9], sel),
                      0x5410);
      *reinterpret_cast<uint4*>(tile + d * kVtKeys + ((kg ^ (d & 7)) * 16)) =
          make_uint4(out[0], out[1], out[2], out[3]);
    }
  }
  named_sync(bar, 256);  // the staged rows are read: the ring slot may be refilled
  if (tid == 0) release();  // earlier units' counts (their stores left a unit ago or more)
  uint8_t* out = vt + (size_t(b) * Nkv + hk) * D * size_t(Sp) + k0;
  for (int i = tid; i < D * kVtKeys / 16; i += 256) {
    const int d = i / 8, c = i % 8;
    *reinterpret_cast<uint4*>(out + size_t(d) * Sp + c * 16) =
        *reinterpret_cast<const uint4*>(tile + d * kVtKeys + ((c ^ (d & 7)) * 16));
  }
  named_sync(bar, 256);  // the tile is read out: the next unit may overwrite it
}

// A few persistent CTAs (JATTN_VT_CTAS) walk the units in the attention kernel's order
// ((batch, kv head) major), VtGroups<D> at a time, and count each (batch, kv head)'s
// finished units in ready[b * Nkv + hk] (release; kVtBatch units at a time, one unit
// late): the attention kernel, launched as this kernel's programmatic dependent on the
// remaining SMs, waits for a pair's count to reach Sp / kVtKeys (acquire) before its
// first V^T load of that pair.
// No deadlock: every transpose CTA is resident (it triggers the dependent launch first
// thing) and waits on nothing. v_map: V as bytes
// [B][S][Nkv][D], box (VtPanel, 1, kVtKeys, 1) with the VtPanel swizzle.
template <int D>
__global__ void __launch_bounds__(256 * VtGroups<D>)
    transpose_v_kernel(const __grid_constant__ CUtensorMap v_map, uint8_t* __restrict__ vt,
                       int Sp, int Nkv, int B, int* __restrict__ ready) {
  extern __shared__ uint8_t vt_smem_raw[];
  uint8_t* smem = vt_smem_raw + smem_align_1024(vt_smem_raw);
  pdl_launch_dependents();  // the attention kernel may start on the other SMs
  const int group = threadIdx.x / 256, tid = threadIdx.x % 256;
  uint8_t* ring = smem + group * VtGroupBytes<D>;  // kVtStages staged units, then the out tile
  uint8_t* tile = ring + kVtStages * D * kVtKeys;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + VtGroups<D> * VtGroupBytes<D>) +
                   group * kVtStages;
  const int nkb = Sp / kVtKeys, units = B * Nkv * nkb;
  const int first = blockIdx.x * VtGroups<D> + group, step = gridDim.x * VtGroups<D>;
  auto issue = [&](int u, int slot) {  // unit u's rows into ring slot `slot`
    const int bh = u / nkb;
    mbar_expect_tx(&full[slot], D * kVtKeys);
#pragma unroll
    for (int p = 0; p < D / VtPanel<D>; ++p)
      tma_load_4d(ring + slot * D * kVtKeys + p * kVtKeys * VtPanel<D>, &v_map, &full[slot],
                  p * VtPanel<D>, bh % Nkv, (u % nkb) * kVtKeys, bh / Nkv);
  };
  if (tid == 0) {
    prefetch_tensormap(&v_map);
    for (int i = 0; i < kVtStages; ++i) mbar_init(&full[i], 1);
    fence_barrier_init();
    for (int i = 0; i < kVtStages && first + i * step < units; ++i) issue(first + i * step, i);
  }
  named_sync(1 + group, 256);  // the barriers are initialized
  // Counts are raised for kVtBatch units at a time, one unit late: a gpu-scope release
  // waits for the SM's stores in flight (~1 us), and its thread holds up the group's next
  // barrier, so it is paid once per kVtBatch units. Units [flushed, n) are not yet counted.
  int flushed = 0;
  auto raise = [&](int n) {
    fence_acq_rel_gpu();
    for (int i = flushed; i < n; ++i) red_relaxed_add(ready + (first + i * step) / nkb, 1);
    flushed = n;
  };
  int n = 0;
  for (int u = first; u < units; u += step, ++n) {
    const int slot = n % kVtStages, bh = u / nkb;
    mbar_wait(&full[slot], (n / kVtStages) & 1);
    transpose_unit<D>(ring + slot * D * kVtKeys, tile, vt, Sp, Nkv, (u % nkb) * kVtKeys,
                      bh % Nkv, bh / Nkv, tid, 1 + group, [&] {
                        if (n - flushed >= kVtBatch) raise(n);
                      });
    if (tid == 0) {
      const int next = u + kVtStages * step;
      if (next < units) issue(next, slot);  // the slot was read before the first barrier
    }
  }
  if (tid == 0 && n > flushed) raise(n);
}

template <int D, bool CAUSAL>
__global__ void __launch_bounds__(384, 1)
    prefill_fp8_kernel(const __grid_constant__ CUtensorMap q_map,
                       const __grid_constant__ CUtensorMap k_map,
                       const __grid_constant__ CUtensorMap v_map,
                       const __grid_constant__ CUtensorMap o_map, const PrefillParams prm) {
  using C = PrefillConfig<D>;
  constexpr int BM = C::BM, BN = C::BN, STAGES = C::STAGES;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + smem_align_1024(smem_raw);
  constexpr int QS = C::Q_SLOTS;
  uint8_t* q_tiles = smem;  // Q buffers: the n-th tile of this CTA uses slot n % QS
  uint8_t* k_tiles = q_tiles + QS * C::Q_BYTES;
  uint8_t* v_tiles = k_tiles + STAGES * C::K_BYTES;
  uint8_t* o_tiles = v_tiles + STAGES * C::V_BYTES;  // [2 consumers][D / 64 panels][64][128 B]
  uint8_t* ones = o_tiles + 2 * C::O_WG_BYTES;  // [ONES_BYTES] e4m3 1.0
  uint64_t* bars = reinterpret_cast<uint64_t*>(ones + C::ONES_BYTES);
  uint64_t* q_full = bars;        // [QS] the slot's tile index (and its Q) are there
  uint64_t* q_empty = bars + QS;  // [QS] both consumers are done with the slot
  uint64_t* k_full = bars + 2 * QS;  // [STAGES]
  uint64_t* v_full = k_full + STAGES;
  uint64_t* empty = v_full + STAGES;
  __shared__ int tile_slot[QS];  // tile index, -1: no more
  __shared__ float2 tile_scales[QS];  // the tile's (scale_log2, v_scale), by the producer

  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    prefetch_tensormap(&q_map);
    prefetch_tensormap(&k_map);
    prefetch_tensormap(&v_map);
    prefetch_tensormap(&o_map);
    for (int i = 0; i < QS; ++i) {
      mbar_init(&q_full[i], 1);
      mbar_init(&q_empty[i], 256);  // one arrival per consumer thread
    }
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(&k_full[s], 1);
      mbar_init(&v_full[s], 1);
      mbar_init(&empty[s], 8);  // one arrival per consumer warp
    }
    fence_barrier_init();
  }
  if (threadIdx.x < C::ONES_BYTES / 4) {
    reinterpret_cast<uint32_t*>(ones)[threadIdx.x] = 0x38383838u;  // four e4m3 1.0
    fence_proxy_async_smem();  // read by wgmma (the async proxy)
  }
  __syncthreads();

  if (wg == 0) {  // ------------------------------------------------------- producer
    setmaxnreg_dec<40>();
    if (threadIdx.x == 0) {
      int ready_pair = -1;  // the (batch, kv head) whose V^T is known complete
      int it = 0;  // K/V blocks issued so far: ring position across tiles
      for (int n = 0;; ++n) {
        const int qs = n % QS;
        if (n >= QS) mbar_wait(&q_empty[qs], ((n / QS) - 1) & 1);
        const int t = n == 0 ? int(blockIdx.x) : int(gridDim.x) + atomicAdd(prm.tile_counter, 1);
        tile_slot[qs] = t < prm.num_tiles ? t : -1;
        if (t >= prm.num_tiles) {
          mbar_arrive(&q_full[qs]);
          break;
        }
        const Tile x = tile_of<C, CAUSAL>(t, prm);
        // The scales' global loads wait here, a tile ahead of the consumers, not in
        // front of a consumer's first S (the q_full arrival below releases them).
        tile_scales[qs] = make_float2(
            prm.sm_scale * prm.q_scale[x.hq] * prm.k_scale[x.hk] * kLog2e, prm.v_scale[x.hk]);
        if (x.n_blocks == 0) {  // no keys: the consumers only write the empty rows
          mbar_arrive(&q_full[qs]);
          continue;
        }
        uint8_t* qt = q_tiles + qs * C::Q_BYTES;
        mbar_expect_tx(&q_full[qs], C::Q_BYTES);
#pragma unroll
        for (int p = 0; p < D / C::QK_PANEL; ++p)
          tma_load_4d(qt + p * BM * C::QK_PANEL, &q_map, &q_full[qs], p * C::QK_PANEL, x.hq,
                      x.m0, x.b);
        for (int i = 0; i < x.n_blocks; ++i, ++it) {
          const int j = x.n_blocks - 1 - i, stage = it % STAGES;
          if (it >= STAGES) mbar_wait(&empty[stage], ((it / STAGES) - 1) & 1);
          uint8_t* kt = k_tiles + stage * C::K_BYTES;
          mbar_expect_tx(&k_full[stage], C::K_BYTES);
#pragma unroll
          for (int p = 0; p < D / C::QK_PANEL; ++p)
            tma_load_4d(kt + p * BN * C::QK_PANEL, &k_map, &k_full[stage], p * C::QK_PANEL,
                        x.hk, j * BN, x.b);
          if (x.b * prm.Nkv + x.hk != ready_pair) {  // this pair's V^T all written?
            ready_pair = x.b * prm.Nkv + x.hk;
            while (ld_acquire(prm.vt_ready + ready_pair) < prm.vt_units) __nanosleep(64);
            fence_proxy_async_global();  // order the TMA (async proxy) reads after it
          }
          mbar_expect_tx(&v_full[stage], C::V_BYTES);
          tma_load_4d(v_tiles + stage * C::V_BYTES, &v_map, &v_full[stage], j * BN, 0, x.hk,
                      x.b);
        }
      }
    }
    return;
  }

  // ---------------------------------------------------------------------- consumers
  setmaxnreg_inc<232>();
  // consumer index: rows [64 cw, 64 cw + 64) of each tile (through a warp reduction, so
  // that the Q descriptors derived from it stay in uniform registers)
  const int cw = __reduce_max_sync(0xffffffff, wg - 1);
  SmemDescs sd{};
#if JATTN_WGMMA
  sd = SmemDescs{smem, opaque(wgmma_desc(smem, C::QK_PANEL)),
                 opaque(wgmma_desc(smem, C::V_PANEL)), opaque(wgmma_desc(ones, 128))};
#endif
  const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
  const int g = lane / 4, t = lane % 4;
  const int row_in_cta = cw * 64 + warp * 16 + g;  // +8 for the second row
  const int offset = prm.S - prm.T;  // bottom-right alignment
  auto sched_wait = [&] { named_sync(1 + cw, 256); };
  auto sched_arrive = [&] { named_arrive(2 - cw, 256); };
  // Every consumer thread arrives itself, after its own read of tile_slot and its own wait
  // for the slot's last S: each read is then ordered before the producer's rewrite by
  // that thread's release (one arrival per warpgroup after a named barrier orders them
  // too, but compute-sanitizer's racecheck flagged that chain wherever a slot is reused).
  auto release_q = [&](int qs) { mbar_arrive(&q_empty[qs]); };
  if (cw == 1) named_arrive(1, 256);  // consumer 0 issues first

  int it0 = 0;  // K/V blocks consumed before this tile: ring position across tiles
  for (int n = 0;; ++n) {
    const int qs = n % QS;
    mbar_wait(&q_full[qs], (n / QS) & 1);
    // Read through a warp reduction: its result is warp-uniform for the compiler, so the
    // ring positions and descriptors derived from the tile stay in uniform registers.
    const int tile = __reduce_max_sync(0xffffffff, tile_slot[qs]);
    if (tile < 0) break;
    const Tile x = tile_of<C, CAUSAL>(tile, prm);
    const int m0 = x.m0, n_blocks = x.n_blocks;
    const uint8_t* q_tile = q_tiles + qs * C::Q_BYTES;
    const float2 sc = tile_scales[qs];  // staged by the producer
    const float scale_log2 = sc.x, v_scale = sc.y;

    float o[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};
    float lsum[2] = {0.f, 0.f};  // row sums of P (float32): rows g and g + 8
    float lblk[4] = {0.f, 0.f, 0.f, 0.f};  // one block's, from the tensor cores (gemm_pv)

    if (n_blocks == 0) release_q(qs);  // no keys: o stays zero, lse -inf
    if (n_blocks > 0) {
      float s[BN / 2];
#pragma unroll
      for (int i = 0; i < BN / 2; ++i) s[i] = 0.f;
      uint32_t p[BN / 32][4];

      // Blocks that need a mask (keys past S, or past the diagonal of the tile's first
      // row) are the highest ones, i.e. the first n_masked visited; the others run the
      // softmax without any per-key test.
      int first_masked = (prm.S / BN);
      if (CAUSAL) first_masked = min(first_masked, max(0, m0 + offset + 1) / BN);
      const int n_masked = n_blocks - min(first_masked, n_blocks);

      // Online softmax of block j held in s: masks if `mask`, raises m where the block's
      // max passes it by more than kRescaleTau, leaves the probabilities in s (pack_p makes
      // them e4m3; their row sums come from the P.V step) and the factors that rescale o
      // and lsum to the new m in alpha (1 where m stayed); returns whether any row of the
      // warp raised m (warp-uniform), i.e. whether o and lsum need rescaling. The row max
      // runs as 4 independent chains (one serial chain of 32 dependent instructions per row
      // was exposed: one warp per scheduler is in here).
      // (Called with a constant mask: after inlining, each call site is specialized.)
      auto softmax = [&](int j, bool mask, float (&alpha)[2]) {
        const int key0 = j * BN + 2 * t;
        bool raised = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (mask) {
            const int last_key = CAUSAL ? m0 + row_in_cta + 8 * h + offset : prm.S - 1;
#pragma unroll
            for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int key = key0 + nt * 8 + e;
                if (key >= prm.S || key > last_key) s[nt * 4 + 2 * h + e] = -INFINITY;
              }
          }
          // of the raw q.k; the chains start from the first two n8 blocks' values
          float mx4[4] = {s[2 * h], s[2 * h + 1], s[4 + 2 * h], s[4 + 2 * h + 1]};
#pragma unroll
          for (int nt = 2; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e)
              mx4[2 * (nt % 2) + e] = fmaxf(mx4[2 * (nt % 2) + e], s[nt * 4 + 2 * h + e]);
          float mx = fmaxf(fmaxf(mx4[0], mx4[1]), fmaxf(mx4[2], mx4[3]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
          const float m_blk = mx * scale_log2;  // m is kept in log2 units
          const float m_new = m_blk > m[h] + kRescaleTau ? m_blk : m[h];
          // -inf only where every key so far is masked: in a block without a mask m_blk is
          // finite, so m_new is too.
          const float m_use = mask && m_new == -INFINITY ? 0.f : m_new;
          alpha[h] = exp2_approx(m[h] - m_use);
          raised |= m_new != m[h];
          m[h] = m_new;
          const float bias = kPBias - m_use;
#pragma unroll
          for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int i = nt * 4 + 2 * h + e;
              s[i] = exp2_approx(fmaf(s[i], scale_log2, bias));
            }
        }
        return __any_sync(0xffffffff, raised);  // warp-uniform: rescale o?
      };
      auto pack_p = [&](uint32_t (&pd)[BN / 32][4]) {
#pragma unroll
        for (int kk = 0; kk < BN / 32; ++kk) {
          const float* s0 = &s[kk * 16];  // n8 blocks 4kk .. 4kk+3
          pd[kk][0] = pack_e4m3x4(s0[0], s0[1], s0[4], s0[5]);
          pd[kk][1] = pack_e4m3x4(s0[2], s0[3], s0[6], s0[7]);
          pd[kk][2] = pack_e4m3x4(s0[8], s0[9], s0[12], s0[13]);
          pd[kk][3] = pack_e4m3x4(s0[10], s0[11], s0[14], s0[15]);
        }
      };
      auto rescale_o = [&](const float (&alpha)[2]) {
#pragma unroll
        for (int i = 0; i < D / 2; i += 4) {
          o[i] *= alpha[0];
          o[i + 1] *= alpha[0];
          o[i + 2] *= alpha[1];
          o[i + 3] *= alpha[1];
        }
        lsum[0] *= alpha[0];
        lsum[1] *= alpha[1];
      };
      auto add_lblk = [&] {  // after the P.V group has completed
        lsum[0] += lblk[0];
        lsum[1] += lblk[2];
      };
      auto release = [&](int stage) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[stage]);
      };

      // First block: S only (o is still zero: no rescale).
      {
        const int stage = it0 % STAGES;
        mbar_wait(&k_full[stage], (it0 / STAGES) & 1);
        sched_wait();
        issue_fence<C>(s, o, lblk);
        gemm_qk<C>(s, q_tile, k_tiles + stage * C::K_BYTES, cw * 64, sd);
        sched_arrive();
        commit_and_wait<C>(s, o, lblk);
        float alpha[2];
        if (n_masked > 0) softmax(n_blocks - 1, true, alpha);
        else softmax(n_blocks - 1, false, alpha);
        pack_p(p);
      }
      // Block it: S_it = Q K_it^T and O += P_{it-1} V_{it-1}, then the softmax of S_it.
      auto step = [&](int it, bool mask) {
        const int g_it = it0 + it;
        const int stage = g_it % STAGES, prev = (g_it - 1) % STAGES;
        mbar_wait(&k_full[stage], (g_it / STAGES) & 1);
        mbar_wait(&v_full[prev], ((g_it - 1) / STAGES) & 1);
        sched_wait();
        issue_fence<C>(s, o, lblk);
        gemm_qk<C>(s, q_tile, k_tiles + stage * C::K_BYTES, cw * 64, sd);
        float alpha[2];
        // S first, alone; then P.V as its own group, which runs under the softmax of S
        // (S's registers are not in P.V's group, so ptxas need not wait for P.V before the
        // softmax writes them; with S and P.V in one group it did); P is packed (its
        // registers redefined) after P.V is done.
        commit_and_wait<C>(s, o, lblk);
        issue_fence<C>(s, o, lblk);
        gemm_pv<C>(o, lblk, p, v_tiles + prev * C::V_BYTES, sd);
        commit_group<C>();
        sched_arrive();
        const bool raised = softmax(n_blocks - 1 - it, mask, alpha);
        wait_groups<C>(s, o, lblk);
        add_lblk();
        release(prev);
        pack_p(p);
        if (raised) rescale_o(alpha);
      };
      int it = 1;
      for (; it < n_masked; ++it) step(it, true);
      for (; it < n_blocks; ++it) step(it, false);
      release_q(qs);  // every S of this tile has completed: the producer may refill Q
      // Last block: P.V only.
      const int g_last = it0 + n_blocks - 1, last = g_last % STAGES;
      mbar_wait(&v_full[last], (g_last / STAGES) & 1);
      sched_wait();
      issue_fence<C>(s, o, lblk);
      gemm_pv<C>(o, lblk, p, v_tiles + last * C::V_BYTES, sd);
      sched_arrive();
      commit_and_wait<C>(s, o, lblk);
      add_lblk();
      release(last);
      it0 += n_blocks;
    }

    // ------------------------------------------------------------------ epilogue
    // O goes through this consumer's staging buffer (128-byte swizzled panels, as the TMA
    // store reads them) and leaves by one TMA store per panel; rows past T are clipped.
    uint8_t* o_stage = o_tiles + cw * C::O_WG_BYTES;
    const bool leader = threadIdx.x % 128 == 0;
    if (leader) bulk_wait_all<true>();  // the previous tile's store has read the buffer
    named_sync(3 + cw, 128);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float lt = lsum[h];
      const int r = warp * 16 + g + 8 * h, row = m0 + cw * 64 + r;
      const float inv = lt > 0.f ? v_scale / lt : 0.f;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<uint32_t*>(o_stage +
                                     tile_offset<C::O_PANEL>(64, r, (dt * 8 + 2 * t) * 2)) =
            f32x2_to_bf16x2(o[dt * 4 + 2 * h] * inv, o[dt * 4 + 2 * h + 1] * inv);
      if (t == 0 && row < prm.T)
        prm.lse[(size_t(x.b) * prm.T + row) * prm.Nq + x.hq] =
            lt > 0.f ? (m[h] + __log2f(lt) - kPBias) * kLn2 : -INFINITY;
    }
    fence_proxy_async_smem();
    named_sync(3 + cw, 128);
    if (leader) {
#pragma unroll
      for (int p = 0; p < 2 * D / C::O_PANEL; ++p)
        tma_store_4d(&o_map, o_stage + p * 64 * C::O_PANEL, p * C::O_PANEL, x.hq,
                     m0 + cw * 64, x.b);
      bulk_commit();
    }
  }
  if (threadIdx.x % 128 == 0) bulk_wait_all<false>();  // before the CTA's memory goes
  // Consumer 1 hands the turn over after each of its GEMM issues, the last one included:
  // consumer 0 takes that final turn so that the barrier ends balanced.
  if (cw == 0) sched_wait();
}

}  // namespace jattn
