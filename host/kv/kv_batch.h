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
  explicit KvBatchBuffers(const Device& device);

  // Describes a batch: `seqs` are its sequences (row i of the block table is seqs[i]); token t
  // belongs to seqs[token_seq[t]] at position token_pos[t], which must already be reserved
  // (pos < length). Tokens of one sequence should be consecutive in the batch with increasing
  // positions (the prefill kernel then shares K/V tiles between them; other orders stay correct).
  // Each token's KV slot is derived from the block table. Throws KvCacheUsageError naming the
  // token on any inconsistency. The upload is enqueued without blocking on the device's queue;
  // the host copy stays alive until that transfer completed (two buffers alternate), and kernels
  // enqueued after it on the same queue see it. Returns the view to pass to the kernels; it stays
  // valid until the upload after next.
  KvBatchView upload(const KvBlockManager& blocks, std::span<const SeqId> seqs,
                     std::span<const int32_t> token_seq, std::span<const int32_t> token_pos);

  const KvBatchView& view() const { return view_; }                    // of the latest upload
  std::span<const int32_t> host_slots() const { return slots_host_; }  // its slots, for checks

 private:
  struct Ring {
    std::vector<int32_t> host;
    ClMem mem;
    size_t capacity = 0;  // int32 elements
    ClEvent written;
  };
  const Device* device_;
  std::array<Ring, 2> ring_;
  int next_ = 0;
  KvBatchView view_;
  std::vector<int32_t> slots_host_;
};

}  // namespace tessera::kv
