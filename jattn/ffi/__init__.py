"""jattn's hand-written CUDA kernels behind the XLA FFI.

  csrc/prefill_fp8.cuh, csrc/decode_fp8.cuh   the kernels (CUDA C++)
  csrc/ffi_prefill.cu, csrc/ffi_decode.cu     their XLA FFI handlers
  jattn.ffi.build                             nvcc JIT build + on-disk cache (+ AOT CLI)
  jattn.ffi.fp8                               registration, `jax.ffi.ffi_call` wrappers and
                                              the capability checks the dispatcher reads

Nothing is compiled at import: a kernel is built the first time a call needs it.
"""
