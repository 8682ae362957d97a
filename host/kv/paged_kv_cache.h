// The paged KV cache of one model: per layer a K pool and a V pool on the layer's device (f16 now;
// other formats plug in through KvFormat), shared block bookkeeping (KvBlockManager), and the
// device side of copy-on-write.
#pragma once

#include <optional>
#include <vector>

#include "devices/device.h"
#include "host/kv/block_manager.h"
#include "host/kv/kv_view.h"

namespace tessera::kv {

struct KvCacheConfig {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  int32_t block_size = 16;  // tokens per block
  int32_t n_blocks = 0;     // blocks per layer pool (every layer has the same block ids)
  KvFormat format = KvFormat::kF16;
};

// Bytes one block costs across all layers, K and V together: budget / this = blocks that fit.
uint64_t kv_bytes_per_block(const KvCacheConfig& config);

// Thread-safety: none. The engine thread alone calls every method; mutations (create/fork/free/
// reserve) also enqueue work on the layer devices' queues, which that thread drives.
class PagedKvCache {
 public:
  // `layer_devices[l]` holds layer l's pools (one device may hold many layers; the pointers must
  // outlive the cache). Allocates 2 * n_layer buffers of layout().pool_bytes() and zero-fills them.
  // Throws KvCacheUsageError on a bad config (and when a pool exceeds its device's max allocation),
  // ClError when the device cannot allocate.
  PagedKvCache(const KvCacheConfig& config, std::vector<const Device*> layer_devices);
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const KvCacheConfig& config() const { return config_; }
  const KvPoolLayout& layout() const { return layout_; }
  KvLayerView layer(int32_t l) const;                       // pools of layer l
  const Device& device(int32_t l) const;                    // device of layer l
  const KvBlockManager& blocks() const { return blocks_; }  // read-only accounting and tables

  // The mutating calls, one per operation (see KvBlockManager for semantics). try_reserve/reserve
  // also enqueue the copy-on-write block copies on every layer's device queue, so kernels enqueued
  // afterwards on those queues (the KV write) see them.
  SeqId create_sequence() { return blocks_.create_sequence(); }
  SeqId fork_sequence(SeqId parent) { return blocks_.fork_sequence(parent); }
  void free_sequence(SeqId seq) { blocks_.free_sequence(seq); }
  std::optional<KvReservation> try_reserve(SeqId seq, int32_t n_tokens);
  KvReservation reserve(SeqId seq, int32_t n_tokens);

 private:
  void copy_blocks(const std::vector<KvBlockCopy>& copies);

  KvCacheConfig config_;
  KvPoolLayout layout_;
  std::vector<const Device*> devices_;
  std::vector<ClMem> k_, v_;
  KvBlockManager blocks_;
};

}  // namespace tessera::kv
