// Plain views of the sequence memory that the kernels' launchers take: where one layer's K/V pools
// are, how the pool is laid out, the device buffers describing one batch to the attention kernels,
// and the one describing it to the recurrent mixers' kernels.
// Header-only, so host/ops links without host/kv.
#pragma once

#include <cstdint>

#include "devices/cl_error.h"
#include "host/kv/kv_format.h"

namespace tessera::kv {

// Pool layout, the same for every layer. Each layer has one K and one V buffer holding
//   [n_blocks][n_head_kv][block_size][token bytes of the format]
// i.e. one KV head's tokens of a block are contiguous (block_size * head_dim halfs for f16), so a
// work item (CPU) or a work-group (GPU) streams a block's head slice as one contiguous range.
// Slot s (a token's place in the pool) is block s / block_size, offset s % block_size.
struct KvPoolLayout {
  KvFormat format = KvFormat::kF16;
  int32_t n_blocks = 0;
  int32_t block_size = 0;  // tokens per block
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;

  uint64_t token_head_bytes() const { return kv_bytes_per_token_head(format, uint32_t(head_dim)); }
  uint64_t block_bytes() const {
    return token_head_bytes() * uint64_t(block_size) * uint64_t(n_head_kv);
  }
  uint64_t pool_bytes() const {
    return block_bytes() * uint64_t(n_blocks);
  }  // one of K or V, one layer
};

// One layer's pools (owned by the PagedKvCache; valid while it lives).
struct KvLayerView {
  cl_mem k = nullptr;
  cl_mem v = nullptr;
};

// One forward step's batch on one device (owned by a KvBatchBuffers; valid until its next upload).
// All arrays are int32 inside the single buffer `meta`, addressed by element offsets:
//   block_tables [n_seqs][block_table_stride]  block ids of each batch sequence, -1 padded
//   token_seq    [n_tokens]  index (row of block_tables) of each token's sequence
//   token_pos    [n_tokens]  position of each token; it attends to positions [0, pos] of its
//                            sequence
//   token_slot   [n_tokens]  pool slot its K/V is written to
//   max_context  [1]         max over tokens of pos + 1 (the decode kernels split their work by it)
// Everything that changes between two steps of one batch shape is in `meta`, so kernel arguments
// taken from a view stay valid for a recorded step program replayed at later positions.
struct KvBatchView {
  cl_mem meta = nullptr;
  uint32_t block_tables_offset = 0;
  uint32_t block_table_stride = 0;
  uint32_t token_seq_offset = 0;
  uint32_t token_pos_offset = 0;
  uint32_t token_slot_offset = 0;
  uint32_t max_context_offset = 0;
  int32_t n_seqs = 0;
  int32_t n_tokens = 0;
  int32_t max_context = 0;  // max over tokens of pos + 1 (host copy of meta[max_context_offset])
  // Most tokens a sequence of this layout can hold (block_table_stride * block size); the decode
  // split is sized for it so it stays the same from step to step. 0: max_context.
  int32_t context_capacity = 0;
};

// One forward step's batch as the recurrent mixers' kernels read it (owned by a
// RecurrentBatchBuffers; valid until its next upload): int32 triples in `seqs` from element
// `seqs_offset`, one per batch sequence: (first token row, token count, state slot in the
// RecurrentStatePool). A sequence's tokens are consecutive rows of the step.
struct RecurrentBatchView {
  cl_mem seqs = nullptr;
  uint32_t seqs_offset = 0;
  int32_t n_seqs = 0;
};

}  // namespace tessera::kv
