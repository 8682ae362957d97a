// The device buffer that describes one forward step's batch to the recurrent mixers' kernels:
// per batch sequence its first token row, token count and recurrent-state slot. One per device.
#pragma once

#include <array>
#include <span>
#include <vector>

#include "devices/device.h"
#include "host/kv/block_manager.h"
#include "host/kv/kv_view.h"
#include "host/kv/recurrent_state_pool.h"

namespace tessera::kv {

// Thread-safety: none; the engine thread owns it (it drives the device's queue).
class RecurrentBatchBuffers {
 public:
  // `max_seqs` (optional): the largest batch, allocated up front so the device buffer (and every
  // kernel argument taken from a view) is the same for every step.
  explicit RecurrentBatchBuffers(const Device& device, int32_t max_seqs = 0);

  // Describes a batch: token t belongs to seqs[token_seq[t]]; each sequence's tokens must be
  // consecutive (a recurrent state is walked in token order) and each sequence must hold a slot of
  // `pool`. A sequence without tokens in the step gets a count of 0. Throws KvCacheUsageError
  // naming the token or sequence on any inconsistency. The upload is enqueued without blocking on
  // the device's queue (the host copy stays alive until it completed; two copies alternate), so
  // kernels enqueued after it on that queue see it. Returns the view for the kernels.
  RecurrentBatchView upload(const RecurrentStatePool& pool, std::span<const SeqId> seqs,
                            std::span<const int32_t> token_seq);

  const RecurrentBatchView& view() const { return view_; }  // of the latest upload
  // The latest upload's triples (first row, count, slot per sequence), for checks.
  std::span<const int32_t> host_triples() const { return triples_; }

 private:
  struct HostCopy {
    std::vector<int32_t> host;
    ClEvent written;
  };
  const Device* device_;
  ClMem mem_;
  size_t capacity_ = 0;  // int32 elements of mem_
  std::array<HostCopy, 2> ring_;
  int next_ = 0;
  RecurrentBatchView view_;
  std::vector<int32_t> triples_;
};

}  // namespace tessera::kv
