"""The "xla" implementation: `jattn.reference` behind the dispatcher's uniform signatures.

XLA fuses it well enough on CPU and it is the portable fallback on any backend; its
memory is O(T * S) per head (no tiling), so it is not meant for long sequences on GPU.
"""

from jattn import reference


def attention(q, k, v, *, sm_scale, variant, q_lengths, kv_lengths, interpret=False):
  return reference.attention(q, k, v, sm_scale=sm_scale, variant=variant,
                             q_lengths=q_lengths, kv_lengths=kv_lengths)


def decode(q, cache, page_table, kv_lens, *, sm_scale, variant, plan=None, interpret=False):
  return reference.decode(q, cache, page_table, kv_lens, sm_scale=sm_scale, variant=variant)


def prefill(q, cache, page_table, kv_lens, q_offsets, *, sm_scale, variant, interpret=False):
  return reference.prefill(q, cache, page_table, kv_lens, q_offsets, sm_scale=sm_scale,
                           variant=variant)


def prefill_ragged(q, k, v, q_offsets, kv_offsets, *, sm_scale, variant, interpret=False):
  return reference.prefill_ragged(q, k, v, q_offsets, kv_offsets, sm_scale=sm_scale,
                                  variant=variant)


def merge_states(o_a, lse_a, o_b, lse_b, *, interpret=False):
  return reference.merge_states(o_a, lse_a, o_b, lse_b)


def append_kv(cache, k_new, v_new, page_table, batch_ids, positions, *, interpret=False):
  return reference.append_kv(cache, k_new, v_new, page_table, batch_ids, positions)


def mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, page_table, kv_lens, *, sm_scale,
               ckv_scale=None, kpe_scale=None, interpret=False):
  return reference.mla_decode(q_nope, q_pe, ckv_cache, kpe_cache, page_table, kv_lens,
                              sm_scale=sm_scale, ckv_scale=ckv_scale, kpe_scale=kpe_scale)


def block_sparse_attention(q, k, v, layout, *, sm_scale, variant, plan=None, interpret=False):
  return reference.block_sparse_attention(q, k, v, layout, sm_scale=sm_scale, variant=variant)
