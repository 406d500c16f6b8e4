// XLA FFI handler of the FP8 prefill kernel (prefill_fp8.cuh), one instantiation per
// shared object: the JIT build (jattn/ffi/build.py) defines
//   JATTN_HEAD_DIM (64 | 128 | 256), JATTN_CAUSAL (0 | 1), JATTN_WGMMA (0 | 1).
// Exported symbol: JattnFp8Prefill. Launches transpose_v_kernel (V -> the V^T workspace,
// the call's third output; a few CTAs) and then, as its programmatic dependent, the
// persistent attention kernel, one CTA per SM at most, which runs beside the transpose.
// Every shape problem or CUDA error is returned as an ffi::Error, which XLA raises as a
// Python exception.
#include <algorithm>
#include <optional>
#include <string>

#include "prefill_fp8.cuh"
#include "tma_host.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kD = JATTN_HEAD_DIM;
constexpr bool kCausal = JATTN_CAUSAL;
using Cfg = jattn::PrefillConfig<kD>;

std::string dims_str(ffi::Span<const int64_t> d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

ffi::Error bad(const std::string& what) {
  return ffi::Error::InvalidArgument("jattn fp8 prefill (head_dim " + std::to_string(kD) +
                                     (kCausal ? ", causal" : "") + "): " + what);
}

ffi::Error Prefill(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer q,
                   ffi::AnyBuffer k, ffi::AnyBuffer v,
                   ffi::Buffer<ffi::F32> q_scale, ffi::Buffer<ffi::F32> k_scale,
                   ffi::Buffer<ffi::F32> v_scale, float sm_scale, bool causal,
                   ffi::ResultBuffer<ffi::BF16> o, ffi::ResultBuffer<ffi::F32> lse,
                   ffi::Result<ffi::AnyBuffer> vt) {
  for (auto* x : {&q, &k, &v})
    if (x->element_type() != ffi::DataType::F8E4M3FN) return bad("q, k, v must be float8_e4m3fn");
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return bad("q, k, v must be rank 4, got " + dims_str(qd) + ", " + dims_str(kd) + ", " +
               dims_str(vd));
  const int64_t B = qd[0], T = qd[1], Nq = qd[2], D = qd[3];
  const int64_t S = kd[1], Nkv = kd[2];
  const int64_t Sp = (S + jattn::kVtKeys - 1) / jattn::kVtKeys * jattn::kVtKeys;
  if (causal != kCausal) return bad("called with causal=" + std::to_string(causal));
  if (D != kD || kd[3] != kD) return bad("head_dim must be " + std::to_string(kD));
  if (kd[0] != B || vd[0] != B || vd[1] != S || vd[2] != Nkv || vd[3] != kD)
    return bad("k " + dims_str(kd) + " / v " + dims_str(vd) + " do not match q " +
               dims_str(qd) + " (k and v are [B, S, Nkv, D])");
  if (Nkv <= 0 || Nq % Nkv) return bad("Nq must be a multiple of Nkv");
  if (T <= 0 || S <= 0) return bad("need T, S > 0");
  const int64_t m_blocks = (T + Cfg::BM - 1) / Cfg::BM, num_tiles = B * Nq * m_blocks;
  if (T > (int64_t(1) << 30) || S > (int64_t(1) << 30) || num_tiles >= (int64_t(1) << 31) ||
      B > 65535 || Nkv > 65535)
    return bad("shape too large");
  if (q_scale.element_count() != size_t(Nq) || k_scale.element_count() != size_t(Nkv) ||
      v_scale.element_count() != size_t(Nkv))
    return bad("scales must be float32 [Nq], [Nkv], [Nkv]");
  if (o->dimensions().size() != 4 || o->element_count() != q.element_count() ||
      lse->element_count() != size_t(B * T * Nq))
    return bad("output shapes must be [B, T, Nq, D] and [B, T, Nq]");

  if (vt->element_type() != ffi::DataType::F8E4M3FN ||
      vt->element_count() != size_t(B * Nkv * kD * Sp))
    return bad("the third output (V^T workspace) must be float8_e4m3fn [B, Nkv, D, Sp], Sp = S "
               "rounded up to " + std::to_string(jattn::kVtKeys));
  // The tile counter and the V^T ready counts (one per (batch, kv head)): scratch memory,
  // the call's own.
  const size_t counters_bytes = sizeof(int) * size_t(1 + B * Nkv);
  std::optional<void*> counter = scratch.Allocate(counters_bytes, sizeof(int));
  if (!counter)
    return ffi::Error::Internal("jattn fp8 prefill: no scratch memory for the tile counter");

  CUtensorMap q_map, k_map, v_map, o_map, v_raw_map;
  std::string err;
  // Boxes: Q [BM rows x panel], K [BN rows x panel], V^T [D rows x BN] (keys innermost).
  if (!jattn::make_map_4d(&q_map, q.untyped_data(), {uint64_t(kD), uint64_t(Nq), uint64_t(T),
                                                     uint64_t(B)},
                          {Cfg::QK_PANEL, 1, Cfg::BM, 1}, Cfg::QK_PANEL, &err) ||
      !jattn::make_map_4d(&k_map, k.untyped_data(), {uint64_t(kD), uint64_t(Nkv), uint64_t(S),
                                                     uint64_t(B)},
                          {Cfg::QK_PANEL, 1, Cfg::BN, 1}, Cfg::QK_PANEL, &err) ||
      !jattn::make_map_4d(&v_map, vt->untyped_data(), {uint64_t(Sp), uint64_t(kD),
                                                      uint64_t(Nkv), uint64_t(B)},
                          {Cfg::BN, kD, 1, 1}, Cfg::V_PANEL, &err) ||
      // V as the transpose reads it: kVtKeys keys x one panel of D.
      !jattn::make_map_4d(&v_raw_map, v.untyped_data(), {uint64_t(kD), uint64_t(Nkv),
                                                         uint64_t(S), uint64_t(B)},
                          {jattn::VtPanel<kD>, 1, jattn::kVtKeys, 1}, jattn::VtPanel<kD>, &err) ||
      // O as bytes: rows of 2 D bytes, boxes of 64 rows x 128 bytes (64 bf16 columns).
      !jattn::make_map_4d(&o_map, o->untyped_data(), {uint64_t(2 * kD), uint64_t(Nq),
                                                      uint64_t(T), uint64_t(B)},
                          {Cfg::O_PANEL, 1, 64, 1}, Cfg::O_PANEL, &err))
    return ffi::Error::Internal("jattn fp8 prefill: " + err);

  jattn::PrefillParams prm;
  prm.o = reinterpret_cast<__nv_bfloat16*>(o->untyped_data());
  prm.lse = lse->typed_data();
  prm.q_scale = q_scale.typed_data();
  prm.k_scale = k_scale.typed_data();
  prm.v_scale = v_scale.typed_data();
  prm.B = int(B);
  prm.T = int(T);
  prm.S = int(S);
  prm.Nq = int(Nq);
  prm.Nkv = int(Nkv);
  prm.m_blocks = int(m_blocks);
  prm.num_tiles = int(num_tiles);
  prm.sm_scale = sm_scale;

  prm.tile_counter = static_cast<int*>(*counter);  // zeroed on the stream below
  prm.vt_ready = prm.tile_counter + 1;
  prm.vt_units = int(Sp / jattn::kVtKeys);
  int dev = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess) e = cudaMemsetAsync(prm.tile_counter, 0, counters_bytes, stream);
  constexpr int vt_smem = jattn::VtSmem<kD>, vt_groups = jattn::VtGroups<kD>;
  if (e == cudaSuccess)
    e = cudaFuncSetAttribute(jattn::transpose_v_kernel<kD>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, vt_smem);
  if (e == cudaSuccess) {
    const int64_t units = B * Nkv * (Sp / jattn::kVtKeys);
    const int64_t vt_ctas = std::min<int64_t>(JATTN_VT_CTAS, (units + vt_groups - 1) / vt_groups);
    jattn::transpose_v_kernel<kD><<<unsigned(vt_ctas), 256 * vt_groups, vt_smem, stream>>>(
        v_raw_map, static_cast<uint8_t*>(vt->untyped_data()), int(Sp), int(Nkv), int(B),
        prm.tile_counter + 1);
    e = cudaGetLastError();
  }
  if (e != cudaSuccess)
    return ffi::Error::Internal(std::string("jattn fp8 prefill: ") + cudaGetErrorString(e));

  auto kernel = jattn::prefill_fp8_kernel<kD, kCausal>;
  // Per call: the attribute is per device, and setting it costs about a microsecond.
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM);
  if (e != cudaSuccess)
    return ffi::Error::Internal(std::string("jattn fp8 prefill: ") + cudaGetErrorString(e));
  const int64_t ctas = std::min<int64_t>(num_tiles, sms);  // persistent: at most one per SM
  // A programmatic dependent of the transpose: its CTAs start on the SMs the transpose
  // leaves free, and wait for a (batch, kv head)'s V^T (its ready count) before loading it.
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(ctas));
  cfg.blockDim = dim3(Cfg::THREADS);
  cfg.dynamicSmemBytes = Cfg::SMEM;
  cfg.stream = stream;
  cudaLaunchAttribute pdl[1];
  pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl;
  cfg.numAttrs = 1;
  e = cudaLaunchKernelEx(&cfg, kernel, q_map, k_map, v_map, o_map, prm);
  if (e != cudaSuccess)
    return ffi::Error::Internal(std::string("jattn fp8 prefill launch: ") + cudaGetErrorString(e));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JattnFp8Prefill, Prefill,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()  // q   float8_e4m3fn
                                  .Arg<ffi::AnyBuffer>()  // k   float8_e4m3fn
                                  .Arg<ffi::AnyBuffer>()  // v   float8_e4m3fn
                                  .Arg<ffi::Buffer<ffi::F32>>()       // q_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()       // k_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()       // v_scale
                                  .Attr<float>("sm_scale")
                                  .Attr<bool>("causal")
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // o
                                  .Ret<ffi::Buffer<ffi::F32>>()   // lse
                                  .Ret<ffi::AnyBuffer>());        // V^T workspace
