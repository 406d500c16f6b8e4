// Host-side TMA descriptor creation. cuTensorMapEncodeTiled is a driver API; it is
// fetched through the runtime (cudaGetDriverEntryPointByVersion) so that the shared
// object needs no link against libcuda.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <array>
#include <cstdint>
#include <string>

namespace jattn {

inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder(std::string* err) {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  if (fn) return fn;
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q;
  cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                   cudaEnableDefault, &q);
  if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || !p) {
    *err = "cuTensorMapEncodeTiled not available from the driver";
    return nullptr;
  }
  fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  return fn;
}

// A 4-d uint8 tensor, dims innermost first, densely packed; box of `box` elements; the
// innermost box extent is `swizzle` bytes (64 or 128) and is swizzled accordingly.
// l2_promotion: bytes the L2 fetches per request (0, 64, 128 or 256).
inline bool make_map_4d(CUtensorMap* map, const void* ptr, std::array<uint64_t, 4> dims,
                        std::array<uint32_t, 4> box, int swizzle, std::string* err,
                        int l2_promotion = 256) {
  auto encode = tensor_map_encoder(err);
  if (!encode) return false;
  cuuint64_t gdim[4] = {dims[0], dims[1], dims[2], dims[3]};
  cuuint64_t gstride[3] = {dims[0], dims[0] * dims[1], dims[0] * dims[1] * dims[2]};
  cuuint32_t bdim[4] = {box[0], box[1], box[2], box[3]};
  cuuint32_t estride[4] = {1, 1, 1, 1};
  CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 4, const_cast<void*>(ptr), gdim,
                      gstride, bdim, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                      swizzle == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                      l2_promotion == 256   ? CU_TENSOR_MAP_L2_PROMOTION_L2_256B
                      : l2_promotion == 128 ? CU_TENSOR_MAP_L2_PROMOTION_L2_128B
                      : l2_promotion == 64  ? CU_TENSOR_MAP_L2_PROMOTION_L2_64B
                                            : CU_TENSOR_MAP_L2_PROMOTION_NONE,
                      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    *err = "cuTensorMapEncodeTiled failed (CUresult " + std::to_string(int(r)) + ")";
    return false;
  }
  return true;
}

}  // namespace jattn
