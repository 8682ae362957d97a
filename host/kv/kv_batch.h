// Device buffers that describe one forward step's batch to the attention kernels: the block tables
// of its sequences and, per token, sequence row, position and KV slot. One per device.
#pragma once

#include <array>
#include <span>
#include <vector>

#include "devices/device.h"
#include "host/kv/block_manager.h"
#include "host/kv/kv_view.h"

namespace tessera::kv {

// Thread-safety: none; the engine thread owns it (it drives the device's queue).
class KvBatchBuffers {
 public:
  // `min_table_stride`: block-table row length to use at least (the engine passes the blocks of
  // its longest sequence, so the layout, and with it every kernel argument taken from a view, stays
  // the same from step to step of one batch shape). `max_seqs` / `max_tokens` (optional): the
  // largest batch, allocated up front so the device buffer is the same for every step.
  explicit KvBatchBuffers(const Device& device, int32_t min_table_stride = 1, int32_t max_seqs = 0,
                          int32_t max_tokens = 0);

  // Describes a batch: `seqs` are its sequences (row i of the block table is seqs[i]); token t
  // belongs to seqs[token_seq[t]] at position token_pos[t], which must already be reserved
  // (pos < length). Tokens of one sequence should be consecutive in the batch with increasing
  // positions (the prefill kernel then shares K/V tiles between them; other orders stay correct).
  // Each token's KV slot is derived from the block table. Throws KvCacheUsageError naming the
  // token on any inconsistency. The upload is enqueued without blocking on the device's queue
  // into one device buffer (reallocated only when a batch needs more room); the host copy stays
  // alive until that transfer completed (two host copies alternate), and kernels enqueued after it
  // on the same queue see it. Returns the view to pass to the kernels; it stays valid until the
  // next upload.
  KvBatchView upload(const KvBlockManager& blocks, std::span<const SeqId> seqs,
                     std::span<const int32_t> token_seq, std::span<const int32_t> token_pos);

  const KvBatchView& view() const { return view_; }                    // of the latest upload
  std::span<const int32_t> host_slots() const { return slots_host_; }  // its slots, for checks

 private:
  struct HostCopy {
    std::vector<int32_t> host;
    ClEvent written;
  };
  const Device* device_;
  int32_t min_stride_;
  ClMem mem_;
  size_t capacity_ = 0;  // int32 elements of mem_
  std::array<HostCopy, 2> ring_;
  int next_ = 0;
  KvBatchView view_;
  std::vector<int32_t> slots_host_;
};

}  // namespace tessera::kv
