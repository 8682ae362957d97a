// The paged KV cache of one model: per layer a K pool and a V pool on the layer's device, in the
// layout this cache decides (per layer and per K/V: format, KV heads, head size, block size) and
// hands to the attention ops; block bookkeeping (KvBlockManager) per layer group — layers with the
// same attention window share block tables, so a window group can release blocks that fell out of
// its window — and the device side of copy-on-write.
#pragma once

#include <array>
#include <optional>
#include <vector>

#include "devices/device.h"
#include "host/kv/block_manager.h"
#include "host/kv/kv_view.h"

namespace tessera::kv {

struct KvCacheConfig {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;  // KV heads of every layer, unless layer_n_head_kv says otherwise
  int32_t head_dim = 0;
  int32_t block_size = 16;             // tokens per block
  int32_t n_blocks = 0;                // blocks per layer pool
  KvFormat k_format = KvFormat::kF16;  // of K in every layer, unless layer_k_format says otherwise
  KvFormat v_format = KvFormat::kF16;  // of V in every layer, unless layer_v_format says otherwise
  std::vector<int32_t> layer_n_head_kv;  // per layer (empty: n_head_kv everywhere; 0: a layer
                                         // without KV, e.g. a recurrent mixer: no pools)
  std::vector<int32_t> layer_window;     // per layer attention window, 0 = all (empty: all 0)
  std::vector<KvFormat> layer_k_format;  // per layer (empty: k_format everywhere)
  std::vector<KvFormat> layer_v_format;  // per layer (empty: v_format everywhere)
};

// Which of a layer's two pools.
enum class KvPart : uint8_t { kK = 0, kV = 1 };

// Bytes one block id costs across all layers, K and V together: budget / this = blocks that fit.
uint64_t kv_bytes_per_block(const KvCacheConfig& config);

// Thread-safety: none. The engine thread alone calls every method; mutations (create/fork/free/
// reserve) also enqueue work on the layer devices' queues, which that thread drives.
class PagedKvCache {
 public:
  // `layer_devices[l]` holds layer l's pools (one device may hold many layers; the pointers must
  // outlive the cache). Allocates 2 * n_layer buffers of their layout's pool_bytes() and
  // zero-fills them. Throws KvCacheUsageError on a bad config (and when a pool exceeds its
  // device's max allocation), ClError when the device cannot allocate.
  PagedKvCache(const KvCacheConfig& config, std::vector<const Device*> layer_devices);
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const KvCacheConfig& config() const { return config_; }
  // The layout of layer l's K or V pool: the one place formats and row sizes are decided.
  const KvPoolLayout& layout(int32_t l = 0, KvPart part = KvPart::kK) const;
  KvLayerView layer(int32_t l) const;     // pools of layer l
  const Device& device(int32_t l) const;  // device of layer l

  // Layer groups: layers of one attention window share block ids and tables.
  int32_t n_groups() const { return int32_t(groups_.size()); }
  int32_t group_of(int32_t l) const;
  // Read-only accounting and tables of a group (group 0 holds layer 0's window).
  const KvBlockManager& blocks(int32_t group = 0) const { return groups_.at(size_t(group)).blocks; }

  // The mutating calls, one per operation (see KvBlockManager for semantics), applied to every
  // group (a sequence has the same id in each). try_reserve/reserve succeed in every group or
  // change nothing; they also enqueue the copy-on-write block copies on the group's layers' device
  // queues, so kernels enqueued afterwards on those queues (the KV write) see them. The returned
  // reservation is group 0's.
  SeqId create_sequence();
  SeqId fork_sequence(SeqId parent);
  void free_sequence(SeqId seq);
  std::optional<KvReservation> try_reserve(SeqId seq, int32_t n_tokens);
  KvReservation reserve(SeqId seq, int32_t n_tokens);

 private:
  struct Group {
    int32_t window = 0;
    std::vector<int32_t> layers;
    KvBlockManager blocks;
  };
  void check_layer(int32_t l) const;  // throws KvCacheUsageError outside [0, n_layer)
  void copy_blocks(const Group& g, const std::vector<KvBlockCopy>& copies);

  KvCacheConfig config_;
  std::vector<std::array<KvPoolLayout, 2>> layouts_;  // per layer: K, V
  std::vector<const Device*> devices_;
  std::vector<ClMem> k_, v_;
  std::vector<Group> groups_;
  std::vector<int32_t> group_of_;  // per layer
};

}  // namespace tessera::kv
