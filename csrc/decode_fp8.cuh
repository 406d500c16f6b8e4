// FP8-KV paged decode: one bf16 query per sequence against a float8_e4m3fn paged cache.
//
// Layouts (jattn.PagedKVCache / jattn.decode):
//   q [B, Nq, D] bf16; k_pages, v_pages [P, page_size, Nkv, D] e4m3;
//   k_scale, v_scale [Nkv] float32; page_table [B, M] int32; kv_lens [B] int32.
//   Sequence b's token s is in page page_table[b, s / page_size], slot s % page_size.
//   Page ids are clamped to [0, P) and kv_lens to [0, M * page_size]: reads stay in the cache.
//   Outputs: o [B, Nq, D] bf16, lse [B, Nq] float32 (natural log; -inf if kv_len == 0).
//
// Grid (splits, Nkv, B). A CTA serves the G = Nq / Nkv query heads of one kv head over one
// split of the keys; its 4 compute warps take interleaved chunks of 32 tokens.
// Both products run on f16 tensor cores (mma.m16n8k16), with K and V converted from e4m3
// (exact) in registers:
//   S^T [16 heads x 8 tokens] = Q [16 x D] . K^T: the K tile is the B operand, so each
//     thread needs D/4 bytes of one token (the d order is permuted the same way in q's A
//     fragment, which the dot product does not see).
//   O^T [D x 8 heads] += V^T [D x 16 tokens] . P^T: V^T is the A operand; a thread loads
//     D/8 contiguous bytes of 4 tokens and interleaves byte pairs with prmt; P^T is the B
//     operand and comes out of S^T's accumulator layout unchanged.
// Heads beyond G (up to 16) are zero rows. The softmax scale is folded into q (as f16);
// k_scale * log2(e) scales the logits, v_scale the output.
// Two ways to bring K and V in (`decode_fp8_kernel`, the host picks):
//   * tma (D128, pages of 8-128 tokens): a fifth warp copies each stage of 128 tokens
//     (one TMA per page and tensor, 128-byte swizzle) into a ring in shared memory; the
//     compute warps read their fragments from there (the swizzle makes those reads
//     conflict-free). B32 S4096 (fp8 probe runs 6-8): as fast as the direct path on an
//     H100 (~108 us, 85 % of copy), 8 % faster on an H200 (87 vs 94 us, 95 % of copy).
//   * direct (any page size and D): the compute warps load their fragments from global
//     memory, the next chunk's loads in flight in registers, the chunk after it
//     prefetched into L2.
// One split writes o and lse directly; several write f32 partials that
// decode_combine_kernel merges (flash-decoding).
#pragma once

#include "common.cuh"

namespace jattn {

struct DecodeParams {
  const __nv_bfloat16* q;
  const uint8_t* k_pages;
  const uint8_t* v_pages;
  const float* k_scale;
  const float* v_scale;
  const int* page_table;
  const int* kv_lens;
  __nv_bfloat16* o;
  float* lse;
  float* part_o;    // [B, Nq, splits, D]
  float* part_lse;  // [B, Nq, splits]
  int B, Nq, Nkv, P, page_size, M, splits, split_tokens;
  int page_shift;  // log2(page_size) when a power of two, else -1
  float sm_scale;
};

// Compute warps per CTA (interleaved 32-token chunks, merged through shared memory). 8 or
// 16 warps measured slower on the direct path (fp8 probe run 4: 122 / 157 us against 116).
constexpr int kDecodeWarps = 4;
constexpr int kStageTokens = 32 * kDecodeWarps;  // tokens per TMA ring stage

// Knobs (benchmarks/fp8_probe.py times them as variants; -1 = the default for D, which
// fp8 probe runs 4-5 chose on an H100 at B32 S4096 Hq32 Hkv8, pages of 16):
// JATTN_DECODE_L2_PREFETCH=A > 0 (direct path): prefetch.global.L2 of the chunk A strides
// after the one being loaded (each lane its token's K and V rows; the page ids come one
// iteration earlier), so DRAM requests run ahead without holding registers. Default: A = 1
// for D <= 128 (D128: A = 0 / 1 / 2 / 4 took 123 / 108 / 117 / 168 us; D64 82 / 72 / 70),
// 0 for D256 (224 us without, 257 with A = 1; it spills and has no register prefetch).
// JATTN_DECODE_KPERM=1 (direct path): the D/4 bytes of K a thread multiplies are taken as
// 16-byte pieces 64 bytes apart (each load instruction covers whole 64-byte spans of a row)
// instead of D/4 contiguous bytes. Default: on for D <= 128 (D64 69 vs 72 us, D128 108 vs
// 108), off for D256 (it spills more).
// JATTN_DECODE_TMA=0: never take the TMA path. JATTN_DECODE_TMA_STAGES: its ring depth.
// JATTN_DECODE_TMA_PROMOTION: the L2 promotion of its tensor maps (bytes: 0, 64, 128, 256).
#ifndef JATTN_DECODE_L2_PREFETCH
#define JATTN_DECODE_L2_PREFETCH -1
#endif
#ifndef JATTN_DECODE_KPERM
#define JATTN_DECODE_KPERM -1
#endif
#ifndef JATTN_DECODE_TMA
#define JATTN_DECODE_TMA 1
#endif
#ifndef JATTN_DECODE_TMA_STAGES
#define JATTN_DECODE_TMA_STAGES 3
#endif
#ifndef JATTN_DECODE_TMA_PROMOTION
#define JATTN_DECODE_TMA_PROMOTION 256
#endif
template <int D>
constexpr int kL2AheadFor = JATTN_DECODE_L2_PREFETCH >= 0 ? JATTN_DECODE_L2_PREFETCH : (D <= 128 ? 1 : 0);
template <int D>
constexpr bool kKPerm = JATTN_DECODE_KPERM >= 0 ? JATTN_DECODE_KPERM != 0 : D <= 128;
constexpr int kTmaStages = JATTN_DECODE_TMA_STAGES;

// The TMA path's page sizes (a stage holds whole pages, each copy lands 1 KB aligned).
__host__ __device__ constexpr bool tma_page_size_ok(int ps) {
  return ps == 8 || ps == 16 || ps == 32 || ps == 64 || ps == 128;
}

// Shared memory of a TMA-path CTA: the ring (1 KB aligned for the swizzle) and its barriers.
template <int D>
constexpr int tma_smem_bytes() {
  return kTmaStages * 2 * kStageTokens * D + 1024 + 2 * kTmaStages * 8;
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p) : "memory");
}

// d of byte e of K word c held by quad lane t (the same order is used for q).
template <int D, bool PERM>
__device__ __forceinline__ int k_dim(int t, int c) {
  return PERM && D >= 64 ? (c / 4) * 64 + t * 16 + 4 * (c % 4) : t * (D / 4) + 4 * c;
}

template <int N>
__device__ __forceinline__ void load_words(uint32_t (&dst)[N], const uint8_t* src) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) {
      uint4 v = __ldg(reinterpret_cast<const uint4*>(src) + i);
      dst[4 * i] = v.x, dst[4 * i + 1] = v.y, dst[4 * i + 2] = v.z, dst[4 * i + 3] = v.w;
    }
  } else {
    static_assert(N == 2, "8-byte loads for D = 64");
    uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
    dst[0] = v.x, dst[1] = v.y;
  }
}

// Token of each load slot within a 32-token chunk: K slot n -> 8n + g; V slot
// 4*ks + u -> 16 ks + {2t, 2t+1, 2t+8, 2t+9}[u].
__device__ __forceinline__ int v_slot_token(int s, int t) {
  return 16 * (s / 4) + 2 * t + (s % 2) + 8 * ((s / 2) % 2);
}

// q A fragments (rows = heads g, g + 8; k16 chunk c covers d = k_dim(t, c) + 0..3), scaled
// by the softmax scale, f16.
template <int D, int HT, bool PERM>
__device__ __forceinline__ void load_q(const DecodeParams& prm, int b, int hk, int G, int g,
                                       int t, uint32_t (&qa)[D / 16][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int head = g + 8 * r;
    const bool ok = head < G && (r == 0 || HT == 2);
    const __nv_bfloat16* qp = prm.q + (size_t(b) * prm.Nq + hk * G + head) * D;
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e)
        x[e] = ok ? __bfloat162float(qp[k_dim<D, PERM>(t, c) + e]) * prm.sm_scale : 0.f;
      qa[c][r] = f32x2_to_f16x2(x[0], x[1]);
      qa[c][2 + r] = f32x2_to_f16x2(x[2], x[3]);
    }
  }
}

// One 32-token chunk starting at token `base` (tokens >= end masked): S^T, the online
// softmax (base 2) and O^T += V^T P^T on the fragments kc (K slots) and vc (V slots).
template <int D, int HT>
__device__ __forceinline__ void attend_chunk(const uint32_t (&qa)[D / 16][4],
                                             const uint32_t (&kc)[4][D / 16],
                                             const uint32_t (&vc)[8][D / 32], int base,
                                             int end, float k_log2, int t,
                                             float (&o)[HT][D / 16][4], float (&m)[HT],
                                             float (&l)[HT]) {
  constexpr int KW = D / 16, VW = D / 32;
  // S^T: 4 tiles of 8 tokens; s[n][0..1] head g tokens 8n+2t+{0,1}, s[n][2..3] head g+8.
  float s[4][4];
#pragma unroll
  for (int n = 0; n < 4; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
    for (int c = 0; c < KW; ++c)
      mma_f16_16816(s[n], qa[c], e4m3x2_to_f16x2(uint16_t(kc[n][c])),
                    e4m3x2_to_f16x2(uint16_t(kc[n][c] >> 16)));
  }
  uint32_t pb[HT][2][2];  // [head tile][k16 step][b0/b1]
  float alpha_t[HT][2];   // alpha of heads 8h + 2t + e (the O^T columns of this thread)
#pragma unroll
  for (int h = 0; h < HT; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int tok = base + 8 * n + 2 * t + e;
        float x = tok < end ? s[n][2 * h + e] * k_log2 : -INFINITY;
        s[n][2 * h + e] = x;
        mx = fmaxf(mx, x);
      }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
    const float m_new = fmaxf(m[h], mx);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = exp2_approx(m[h] - m_use);
    m[h] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float p = exp2_approx(s[n][2 * h + e] - m_use);
        s[n][2 * h + e] = p;
        sum += p;
      }
    l[h] = l[h] * alpha + sum;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      pb[h][ks][0] = f32x2_to_f16x2(s[2 * ks][2 * h], s[2 * ks][2 * h + 1]);
      pb[h][ks][1] = f32x2_to_f16x2(s[2 * ks + 1][2 * h], s[2 * ks + 1][2 * h + 1]);
    }
    alpha_t[h][0] = __shfl_sync(0xffffffff, alpha, 4 * (2 * t));
    alpha_t[h][1] = __shfl_sync(0xffffffff, alpha, 4 * (2 * t + 1));
  }
  // O^T += V^T P^T; o[h][i][0..1] = d g*D/8 + 2i, heads 8h + 2t + {0,1}; [2..3] = d + 1.
#pragma unroll
  for (int h = 0; h < HT; ++h)
#pragma unroll
    for (int i = 0; i < D / 16; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[h][i][e] *= alpha_t[h][e % 2];
#pragma unroll
  for (int ks = 0; ks < 2; ++ks)
#pragma unroll
    for (int w = 0; w < VW; ++w) {
      const uint32_t x0 = vc[4 * ks][w], y0 = vc[4 * ks + 1][w];      // tokens 2t, 2t+1
      const uint32_t x1 = vc[4 * ks + 2][w], y1 = vc[4 * ks + 3][w];  // tokens 2t+8, 2t+9
      const uint32_t lo0 = prmt(x0, y0, 0x5140), hi0 = prmt(x0, y0, 0x7362);
      const uint32_t lo1 = prmt(x1, y1, 0x5140), hi1 = prmt(x1, y1, 0x7362);
      uint32_t a_lo[4] = {e4m3x2_to_f16x2(uint16_t(lo0)), e4m3x2_to_f16x2(uint16_t(lo0 >> 16)),
                          e4m3x2_to_f16x2(uint16_t(lo1)), e4m3x2_to_f16x2(uint16_t(lo1 >> 16))};
      uint32_t a_hi[4] = {e4m3x2_to_f16x2(uint16_t(hi0)), e4m3x2_to_f16x2(uint16_t(hi0 >> 16)),
                          e4m3x2_to_f16x2(uint16_t(hi1)), e4m3x2_to_f16x2(uint16_t(hi1 >> 16))};
#pragma unroll
      for (int h = 0; h < HT; ++h) {
        mma_f16_16816(o[h][2 * w], a_lo, pb[h][ks][0], pb[h][ks][1]);
        mma_f16_16816(o[h][2 * w + 1], a_hi, pb[h][ks][0], pb[h][ks][1]);
      }
    }
}

// Merges the compute warps' (m, l, o) through shared memory (o_w: [warps][8 HT][D] f32)
// and writes o / lse (one split) or the f32 partials. Every thread of the CTA calls it;
// `compute` marks the compute warps' threads.
template <int D, int HT>
__device__ __forceinline__ void merge_warps(const DecodeParams& prm, bool compute, int warp,
                                            int g, int t, int b, int hk, int split, int G,
                                            const float (&o)[HT][D / 16][4],
                                            const float (&m)[HT], const float (&l)[HT],
                                            float* o_w) {
  constexpr int GH = 8 * HT;
  __shared__ float m_w[kDecodeWarps][GH], l_w[kDecodeWarps][GH];
  if (compute) {
#pragma unroll
    for (int h = 0; h < HT; ++h) {
      float lt = l[h];
      lt += __shfl_xor_sync(0xffffffff, lt, 1);
      lt += __shfl_xor_sync(0xffffffff, lt, 2);
      if (t == 0) m_w[warp][g + 8 * h] = m[h], l_w[warp][g + 8 * h] = lt;
    }
  }
  __syncthreads();
  if (compute) {
#pragma unroll
    for (int h = 0; h < HT; ++h)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int head = 8 * h + 2 * t + e;
        float mx = -INFINITY;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, m_w[w][head]);
        const float f = m_w[warp][head] == -INFINITY ? 0.f : exp2_approx(m_w[warp][head] - mx);
        float* dst = o_w + (warp * GH + head) * D + g * (D / 8);
#pragma unroll
        for (int i = 0; i < D / 16; ++i) {
          dst[2 * i] = o[h][i][e] * f;
          dst[2 * i + 1] = o[h][i][2 + e] * f;
        }
      }
  }
  __syncthreads();
  const float v_scale = prm.v_scale[hk];
  for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
    const int head = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) mx = fmaxf(mx, m_w[w][head]);
    float lt = 0.f, acc = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      if (m_w[w][head] == -INFINITY) continue;
      lt += l_w[w][head] * exp2_approx(m_w[w][head] - mx);
      acc += o_w[(w * GH + head) * D + d];
    }
    const size_t row = size_t(b) * prm.Nq + hk * G + head;
    const float lse = lt > 0.f ? (mx + __log2f(lt)) * kLn2 : -INFINITY;
    if (prm.splits == 1) {
      prm.o[row * D + d] = __float2bfloat16(lt > 0.f ? acc * v_scale / lt : 0.f);
      if (d == 0) prm.lse[row] = lse;
    } else {
      prm.part_o[(row * prm.splits + split) * D + d] = lt > 0.f ? acc / lt : 0.f;
      if (d == 0) prm.part_lse[row * prm.splits + split] = lse;
    }
  }
}

// Direct path: the compute warps load K and V straight from the pages.
template <int D, int HT>  // HT: 8-head tiles of the group (1: G <= 8, 2: G <= 16)
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_fp8_kernel(const DecodeParams prm) {
  constexpr int KW = D / 16;  // K words per thread per token (D/4 bytes)
  constexpr int VW = D / 32;  // V words per thread per token (D/8 bytes)
  constexpr bool kPerm = kKPerm<D>;
  // Prefetching the next chunk doubles the load registers: only where they fit.
  constexpr bool kPrefetch = D * HT <= 128;
  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int G = prm.Nq / prm.Nkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;

  const int max_len = prm.M * prm.page_size;
  const int kv_len = min(max(prm.kv_lens[b], 0), max_len);
  const int begin = split * prm.split_tokens;
  const int end = min(kv_len, begin + prm.split_tokens);
  const int* table = prm.page_table + size_t(b) * prm.M;

  uint32_t qa[KW][4];
  load_q<D, HT, kPerm>(prm, b, hk, G, g, t, qa);
  const float k_log2 = prm.k_scale[hk] * kLog2e;

  float o[HT][D / 16][4];
#pragma unroll
  for (int h = 0; h < HT; ++h)
#pragma unroll
    for (int i = 0; i < D / 16; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[h][i][e] = 0.f;
  float m[HT], l[HT];
#pragma unroll
  for (int h = 0; h < HT; ++h) m[h] = -INFINITY, l[h] = 0.f;

  // Addresses: lane l of a warp finds the cache row ((page * page_size + slot) * Nkv + hk)
  // of token base + l of a chunk (-1 past the end: K is then masked, V zeroed), one page
  // table load per lane and chunk; the load slots take their rows by shuffle. Page ids
  // are loaded two chunks before their data and turned into rows one chunk before.
  const int ps = prm.page_size;
  auto page_of = [&](int tok) { return prm.page_shift >= 0 ? tok >> prm.page_shift : tok / ps; };
  auto page_id = [&](int chunk) {  // (clamped: every lane reads a valid table entry)
    return __ldg(table + page_of(min(chunk + lane, end - 1)));
  };
  auto row_of = [&](int chunk, int pid) {
    const int tok = chunk + lane, page = page_of(tok);
    const int r = (min(max(pid, 0), prm.P - 1) * ps + (tok - page * ps)) * prm.Nkv + hk;
    return tok < end ? r : -1;
  };
  uint32_t kc[4][KW], vc[8][VW], kn[kPrefetch ? 4 : 1][KW], vn[kPrefetch ? 8 : 1][VW];
  auto load_chunk = [&](int rows, auto& kd, auto& vd) {
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      const int r = __shfl_sync(0xffffffff, rows, 8 * n + g);
      const uint8_t* row = prm.k_pages + size_t(max(r, 0)) * D;  // (masked later)
      if constexpr (kPerm && KW >= 4) {
#pragma unroll
        for (int i = 0; i < KW / 4; ++i) {
          uint4 v = __ldg(reinterpret_cast<const uint4*>(row + i * 64 + t * 16));
          kd[n][4 * i] = v.x, kd[n][4 * i + 1] = v.y, kd[n][4 * i + 2] = v.z, kd[n][4 * i + 3] = v.w;
        }
      } else {
        load_words(kd[n], row + t * (D / 4));
      }
    }
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const int r = __shfl_sync(0xffffffff, rows, v_slot_token(s, t));
      load_words(vd[s], prm.v_pages + size_t(max(r, 0)) * D + g * (D / 8));
      if (r < 0)
#pragma unroll
        for (int w = 0; w < VW; ++w) vd[s][w] = 0;  // p is 0 there, but junk may be NaN
    }
  };
  constexpr int kL2Ahead = kL2AheadFor<D>;
  auto prefetch_chunk = [&](int rows) {  // (128-byte lines)
    if (rows >= 0)
#pragma unroll
      for (int i = 0; i < (D + 127) / 128; ++i) {
        prefetch_l2(prm.k_pages + size_t(rows) * D + 128 * i);
        prefetch_l2(prm.v_pages + size_t(rows) * D + 128 * i);
      }
  };

  const int stride = 32 * kDecodeWarps;
  int base = begin + 32 * warp;
  // At the top of each iteration: r_a = rows of the next chunk to load (this one without
  // register prefetch, the following one with it), r_b = rows of the chunk after r_a's,
  // pid_c = page ids of the chunk after r_b's.
  int r_a = 0, r_b = 0, pid_c = 0;
  int pid_l2 = 0;  // page ids of the chunk kL2Ahead strides after the next one loaded
  if (kL2Ahead > 0 && base < end) pid_l2 = page_id(base + (kL2Ahead + (kPrefetch ? 1 : 0)) * stride);
  if (base < end) {
    r_a = row_of(base, page_id(base));
    r_b = row_of(base + stride, page_id(base + stride));
    pid_c = page_id(base + 2 * stride);
    if constexpr (kPrefetch) {
      load_chunk(r_a, kc, vc);
      r_a = r_b;
      r_b = row_of(base + 2 * stride, pid_c);
      pid_c = page_id(base + 3 * stride);
    }
  }
  for (; base < end; base += stride) {
    const int next = kPrefetch ? base + stride : base;  // the chunk loaded now
    if constexpr (kPrefetch) {
      if (next < end) load_chunk(r_a, kn, vn);
    } else {
      load_chunk(r_a, kc, vc);
    }
    if constexpr (kL2Ahead > 0) {
      const int far = next + kL2Ahead * stride;
      if (far < end) prefetch_chunk(row_of(far, pid_l2));
      pid_l2 = page_id(far + stride);
    }
    r_a = r_b;
    r_b = row_of(next + 2 * stride, pid_c);
    pid_c = page_id(next + 3 * stride);

    attend_chunk<D, HT>(qa, kc, vc, base, end, k_log2, t, o, m, l);
    if constexpr (kPrefetch) {
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int w = 0; w < KW; ++w) kc[n][w] = kn[n][w];
#pragma unroll
      for (int s2 = 0; s2 < 8; ++s2)
#pragma unroll
        for (int w = 0; w < VW; ++w) vc[s2][w] = vn[s2][w];
    }
  }

  extern __shared__ float o_w[];  // [warps][GH][D]
  merge_warps<D, HT>(prm, true, warp, g, t, b, hk, split, G, o, m, l, o_w);
}

// TMA path (D128, pages of 8-128 tokens): warp kDecodeWarps copies stage i (tokens
// begin + 128 i ..., one TMA per page and tensor) into ring slot i % kTmaStages; compute
// warp w takes tokens 32 w .. 32 w + 31 of each stage. k_map / v_map: the pages as
// [P, page_size, Nkv, D] uint8, box [1, page_size, 1, D], 128-byte swizzle (16-byte
// chunk c of row r sits at chunk c ^ (r % 8)). The host takes this path only when
// split_tokens is a multiple of kStageTokens (stages start on page boundaries).
template <int D, int HT>
__global__ void __launch_bounds__((kDecodeWarps + 1) * 32, 2)  // two CTAs per SM
    decode_fp8_tma_kernel(const __grid_constant__ CUtensorMap k_map,
                          const __grid_constant__ CUtensorMap v_map, const DecodeParams prm) {
  static_assert(D == 128, "the 128-byte swizzle holds one 128-byte row per token");
  constexpr int KW = D / 16, VW = D / 32;
  constexpr int kStageBytes = kStageTokens * D;  // per tensor
  const int split = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int G = prm.Nq / prm.Nkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const bool compute = warp < kDecodeWarps;

  const int max_len = prm.M * prm.page_size;
  const int kv_len = min(max(prm.kv_lens[b], 0), max_len);
  const int begin = split * prm.split_tokens;
  const int end = min(kv_len, begin + prm.split_tokens);
  const int n_stages = end > begin ? (end - begin + kStageTokens - 1) / kStageTokens : 0;

  extern __shared__ uint8_t smem_raw[];
  uint8_t* ring = smem_raw + smem_align_1024(smem_raw);
  uint8_t* k_ring = ring;                                  // [stages][128 tokens][D]
  uint8_t* v_ring = ring + kTmaStages * kStageBytes;       // [stages][128 tokens][D]
  uint64_t* full = reinterpret_cast<uint64_t*>(ring + 2 * kTmaStages * kStageBytes);
  uint64_t* empty = full + kTmaStages;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kTmaStages; ++s) mbar_init(&full[s], 1), mbar_init(&empty[s], kDecodeWarps);
    fence_barrier_init();
  }
  __syncthreads();

  float o[HT][D / 16][4];
  float m[HT], l[HT];
#pragma unroll
  for (int h = 0; h < HT; ++h) {
    m[h] = -INFINITY, l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < D / 16; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[h][i][e] = 0.f;
  }

  if (!compute) {
    // Producer warp: lane j < pages per stage copies page j of each stage; lane 0 first
    // arms the stage's barrier with the bytes of both tensors. Page ids are read one
    // stage ahead.
    const int ps = prm.page_size, pages = kStageTokens / ps;
    const int* table = prm.page_table + size_t(b) * prm.M;
    auto page_id = [&](int i) {
      const int tok = begin + i * kStageTokens + lane * ps;
      const int page = min(prm.page_shift >= 0 ? tok >> prm.page_shift : tok / ps, prm.M - 1);
      return min(max(__ldg(table + page), 0), prm.P - 1);
    };
    int pid = lane < pages && n_stages > 0 ? page_id(0) : 0;
    for (int i = 0; i < n_stages; ++i) {
      const int s = i % kTmaStages;
      const int pid_next = lane < pages && i + 1 < n_stages ? page_id(i + 1) : 0;
      if (i >= kTmaStages) mbar_wait(&empty[s], ((i / kTmaStages) - 1) & 1);
      if (lane == 0) mbar_expect_tx(&full[s], 2 * kStageBytes);
      __syncwarp();
      if (lane < pages) {
        tma_load_4d(k_ring + s * kStageBytes + lane * ps * D, &k_map, &full[s], 0, hk, 0, pid);
        tma_load_4d(v_ring + s * kStageBytes + lane * ps * D, &v_map, &full[s], 0, hk, 0, pid);
      }
      pid = pid_next;
    }
  } else {
    uint32_t qa[KW][4];
    load_q<D, HT, false>(prm, b, hk, G, g, t, qa);
    const float k_log2 = prm.k_scale[hk] * kLog2e;
    for (int i = 0; i < n_stages; ++i) {
      const int s = i % kTmaStages;
      const int base = begin + i * kStageTokens + 32 * warp;
      mbar_wait(&full[s], (i / kTmaStages) & 1);
      const uint8_t* ks = k_ring + s * kStageBytes;
      const uint8_t* vs = v_ring + s * kStageBytes;
      uint32_t kc[4][KW], vc[8][VW];
#pragma unroll
      for (int n = 0; n < 4; ++n) {  // D/4 = 32 bytes of token 8n + g: chunks 2t, 2t + 1
        const int r = 32 * warp + 8 * n + g;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const uint4 v = *reinterpret_cast<const uint4*>(ks + r * D + (((2 * t + c) ^ (r & 7)) << 4));
          kc[n][4 * c] = v.x, kc[n][4 * c + 1] = v.y, kc[n][4 * c + 2] = v.z, kc[n][4 * c + 3] = v.w;
        }
      }
#pragma unroll
      for (int sl = 0; sl < 8; ++sl) {  // D/8 = 16 bytes (chunk g) of the slot's token
        const int r = 32 * warp + v_slot_token(sl, t);
        const uint4 v = *reinterpret_cast<const uint4*>(vs + r * D + ((g ^ (r & 7)) << 4));
        const bool ok = base - 32 * warp + r < end;  // junk past the end may be NaN
        vc[sl][0] = ok ? v.x : 0u, vc[sl][1] = ok ? v.y : 0u;
        vc[sl][2] = ok ? v.z : 0u, vc[sl][3] = ok ? v.w : 0u;
      }
      __syncwarp();
      if (lane == 0) mbar_arrive(&empty[s]);  // (release: the reads above come first)
      if (base < end) attend_chunk<D, HT>(qa, kc, vc, base, end, k_log2, t, o, m, l);
    }
  }
  __syncthreads();  // every stage consumed: the ring becomes the merge buffer
  merge_warps<D, HT>(prm, compute, warp, g, t, b, hk, split, G, o, m, l,
                     reinterpret_cast<float*>(ring));
}

// Merges the splits' partials: o = v_scale * sum_s w_s o_s / sum_s w_s, w_s = e^(lse_s - max).
template <int D>
__global__ void __launch_bounds__(D) decode_combine_kernel(const DecodeParams prm) {
  const int row = blockIdx.x, d = threadIdx.x;  // row = b * Nq + head
  const float* lse = prm.part_lse + size_t(row) * prm.splits;
  float mx = -INFINITY;
  for (int s = 0; s < prm.splits; ++s) mx = fmaxf(mx, lse[s]);
  float wsum = 0.f, acc = 0.f;
  if (mx != -INFINITY)
    for (int s = 0; s < prm.splits; ++s) {
      const float w = __expf(lse[s] - mx);
      wsum += w;
      acc += w * prm.part_o[(size_t(row) * prm.splits + s) * D + d];
    }
  const float v_scale = prm.v_scale[(row % prm.Nq) / (prm.Nq / prm.Nkv)];
  prm.o[size_t(row) * D + d] = __float2bfloat16(wsum > 0.f ? acc * v_scale / wsum : 0.f);
  if (d == 0) prm.lse[row] = wsum > 0.f ? mx + __logf(wsum) : -INFINITY;
}

}  // namespace jattn
