// XLA FFI handler of the FP8-KV paged decode kernels (decode_fp8.cuh), one instantiation
// per shared object: the JIT build (jattn/ffi/build.py) defines
//   JATTN_HEAD_DIM (64 | 128 | 256), JATTN_HEAD_TILES (1: G <= 8, 2: G <= 16).
// Exported symbol: JattnFp8Decode. Shape problems and CUDA errors come back as ffi::Error.
// D128 with pages of 8-128 tokens and splits of whole TMA stages runs the TMA kernel,
// everything else the direct one.
#include <string>

#include "decode_fp8.cuh"
#include "tma_host.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kD = JATTN_HEAD_DIM;
constexpr int kHT = JATTN_HEAD_TILES;

ffi::Error bad(const std::string& what) {
  return ffi::Error::InvalidArgument("jattn fp8 decode (head_dim " + std::to_string(kD) +
                                     "): " + what);
}

ffi::Error Decode(cudaStream_t stream, ffi::Buffer<ffi::BF16> q, ffi::AnyBuffer k_pages,
                  ffi::AnyBuffer v_pages, ffi::Buffer<ffi::F32> k_scale,
                  ffi::Buffer<ffi::F32> v_scale, ffi::Buffer<ffi::S32> page_table,
                  ffi::Buffer<ffi::S32> kv_lens, float sm_scale, int64_t splits,
                  int64_t split_tokens, ffi::ResultBuffer<ffi::BF16> o,
                  ffi::ResultBuffer<ffi::F32> lse, ffi::ResultBuffer<ffi::F32> part_o,
                  ffi::ResultBuffer<ffi::F32> part_lse) {
  if (k_pages.element_type() != ffi::DataType::F8E4M3FN ||
      v_pages.element_type() != ffi::DataType::F8E4M3FN)
    return bad("pages must be float8_e4m3fn");
  auto qd = q.dimensions(), kd = k_pages.dimensions(), vd = v_pages.dimensions();
  auto td = page_table.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || vd.size() != 4 || td.size() != 2)
    return bad("q [B, Nq, D], pages [P, page_size, Nkv, D], page_table [B, M] expected");
  const int64_t B = qd[0], Nq = qd[1], P = kd[0], ps = kd[1], Nkv = kd[2], M = td[1];
  if (qd[2] != kD || kd[3] != kD || vd[3] != kD) return bad("head_dim must be " + std::to_string(kD));
  for (int i = 0; i < 3; ++i)
    if (vd[i] != kd[i]) return bad("k_pages and v_pages shapes differ");
  if (Nkv <= 0 || Nq % Nkv) return bad("Nq must be a multiple of Nkv");
  const int64_t G = Nq / Nkv;
  if (G > 8 * kHT) return bad("group size Nq / Nkv = " + std::to_string(G) + " > " +
                              std::to_string(8 * kHT) + " for this instantiation");
  if (td[0] != B || kv_lens.element_count() != size_t(B)) return bad("page_table / kv_lens batch");
  if (k_scale.element_count() != size_t(Nkv) || v_scale.element_count() != size_t(Nkv))
    return bad("k_scale / v_scale must be float32 [Nkv]");
  if (B <= 0 || B > 65535 || Nkv > 65535 || P <= 0 || ps <= 0 || M <= 0 ||
      M * ps > (int64_t(1) << 30) || P * ps * Nkv >= (int64_t(1) << 31))
    return bad("shape out of range (pages * page_size * Nkv must be < 2^31)");
  if (splits < 1 || splits > 65535 || split_tokens % 32 || splits * split_tokens < M * ps)
    return bad("splits * split_tokens must cover max_pages * page_size, split_tokens % 32 == 0");
  if (o->element_count() != q.element_count() || lse->element_count() != size_t(B * Nq) ||
      part_o->element_count() < size_t(B * Nq * splits * kD) ||
      part_lse->element_count() < size_t(B * Nq * splits))
    return bad("output shapes");

  jattn::DecodeParams prm;
  prm.q = reinterpret_cast<const __nv_bfloat16*>(q.untyped_data());
  prm.k_pages = static_cast<const uint8_t*>(k_pages.untyped_data());
  prm.v_pages = static_cast<const uint8_t*>(v_pages.untyped_data());
  prm.k_scale = k_scale.typed_data();
  prm.v_scale = v_scale.typed_data();
  prm.page_table = page_table.typed_data();
  prm.kv_lens = kv_lens.typed_data();
  prm.o = reinterpret_cast<__nv_bfloat16*>(o->untyped_data());
  prm.lse = lse->typed_data();
  prm.part_o = part_o->typed_data();
  prm.part_lse = part_lse->typed_data();
  prm.B = int(B);
  prm.Nq = int(Nq);
  prm.Nkv = int(Nkv);
  prm.P = int(P);
  prm.page_size = int(ps);
  prm.page_shift = (ps & (ps - 1)) ? -1 : __builtin_ctzll(uint64_t(ps));
  prm.M = int(M);
  prm.splits = int(splits);
  prm.split_tokens = int(split_tokens);
  prm.sm_scale = sm_scale;

  const dim3 grid{unsigned(splits), unsigned(Nkv), unsigned(B)};
  cudaError_t e = cudaSuccess;
  bool launched = false;
  if constexpr (kD == 128 && JATTN_DECODE_TMA) {
    if (jattn::tma_page_size_ok(int(ps)) && split_tokens % jattn::kStageTokens == 0) {
      // Pages [P, ps, Nkv, D] as uint8, one box per page and kv head: [1, ps, 1, D].
      CUtensorMap k_map, v_map;
      std::string err;
      auto page_map = [&](CUtensorMap* map, const void* pages) {
        return jattn::make_map_4d(map, pages, {uint64_t(kD), uint64_t(Nkv), uint64_t(ps),
                                               uint64_t(P)},
                                  {uint32_t(kD), 1u, uint32_t(ps), 1u}, 128, &err,
                                  JATTN_DECODE_TMA_PROMOTION);
      };
      if (!page_map(&k_map, k_pages.untyped_data()) || !page_map(&v_map, v_pages.untyped_data()))
        return ffi::Error::Internal("jattn fp8 decode: " + err);
      auto kernel = jattn::decode_fp8_tma_kernel<kD, kHT>;
      const int smem = jattn::tma_smem_bytes<kD>();
      e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
      if (e == cudaSuccess) {
        kernel<<<grid, (jattn::kDecodeWarps + 1) * 32, smem, stream>>>(k_map, v_map, prm);
        e = cudaGetLastError();
      }
      launched = true;
    }
  }
  if (!launched) {
    auto kernel = jattn::decode_fp8_kernel<kD, kHT>;
    const int smem = jattn::kDecodeWarps * 8 * kHT * kD * sizeof(float);
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e == cudaSuccess) {
      kernel<<<grid, jattn::kDecodeWarps * 32, smem, stream>>>(prm);
      e = cudaGetLastError();
    }
  }
  if (e == cudaSuccess && splits > 1) {
    jattn::decode_combine_kernel<kD><<<unsigned(B * Nq), kD, 0, stream>>>(prm);
    e = cudaGetLastError();
  }
  if (e != cudaSuccess)
    return ffi::Error::Internal(std::string("jattn fp8 decode launch: ") + cudaGetErrorString(e));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JattnFp8Decode, Decode,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // q
                                  .Arg<ffi::AnyBuffer>()          // k_pages float8_e4m3fn
                                  .Arg<ffi::AnyBuffer>()          // v_pages float8_e4m3fn
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v_scale
                                  .Arg<ffi::Buffer<ffi::S32>>()   // page_table
                                  .Arg<ffi::Buffer<ffi::S32>>()   // kv_lens
                                  .Attr<float>("sm_scale")
                                  .Attr<int64_t>("splits")
                                  .Attr<int64_t>("split_tokens")
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // o
                                  .Ret<ffi::Buffer<ffi::F32>>()   // lse
                                  .Ret<ffi::Buffer<ffi::F32>>()   // part_o
                                  .Ret<ffi::Buffer<ffi::F32>>()); // part_lse
