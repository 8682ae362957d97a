// Paged KV cache: pool allocation per layer and the device copies behind copy-on-write.
#include "host/kv/paged_kv_cache.h"

#include <string>

namespace tessera::kv {

namespace {
KvBlockManager checked_manager(const KvCacheConfig& c, size_t n_devices) {
  auto bad = [](const std::string& what) { throw KvCacheUsageError("kv cache config: " + what); };
  if (c.n_layer < 1) bad("n_layer " + std::to_string(c.n_layer) + " must be >= 1");
  if (c.n_head_kv < 1) bad("n_head_kv " + std::to_string(c.n_head_kv) + " must be >= 1");
  if (c.head_dim < 1) bad("head_dim " + std::to_string(c.head_dim) + " must be >= 1");
  if (c.block_size < 1) bad("block_size " + std::to_string(c.block_size) + " must be >= 1");
  if (c.n_blocks < 1) bad("n_blocks " + std::to_string(c.n_blocks) + " must be >= 1");
  if (kv_format_traits(c.format).bytes_per_token_head(uint32_t(c.head_dim)) == 0)
    bad("format " + std::string(kv_format_name(c.format)) + " cannot store head_dim " +
        std::to_string(c.head_dim));
  if (int64_t(c.n_blocks) * c.block_size > INT32_MAX)
    bad("n_blocks * block_size exceeds int32 slot indices");
  if (n_devices != size_t(c.n_layer))
    bad(std::to_string(n_devices) + " layer devices given for " + std::to_string(c.n_layer) +
        " layers");
  return KvBlockManager(c.n_blocks, c.block_size);
}
}  // namespace

uint64_t kv_bytes_per_block(const KvCacheConfig& c) {
  KvPoolLayout l{c.format, 1, c.block_size, c.n_head_kv, c.head_dim};
  return 2 * uint64_t(c.n_layer) * l.block_bytes();
}

PagedKvCache::PagedKvCache(const KvCacheConfig& config, std::vector<const Device*> layer_devices)
    : config_(config),
      layout_{config.format, config.n_blocks, config.block_size, config.n_head_kv, config.head_dim},
      devices_(std::move(layer_devices)),
      blocks_(checked_manager(config, devices_.size())) {
  const uint64_t bytes = layout_.pool_bytes();
  for (int32_t l = 0; l < config_.n_layer; ++l) {
    const Device* d = devices_[size_t(l)];
    if (!d) throw KvCacheUsageError("kv cache: layer " + std::to_string(l) + " has no device");
    if (bytes > d->info().max_alloc_bytes)
      throw KvCacheUsageError("kv cache: layer " + std::to_string(l) + " pool of " +
                              std::to_string(bytes) + " bytes exceeds the max allocation (" +
                              std::to_string(d->info().max_alloc_bytes) + ") of " +
                              d->info().label() + "; use fewer blocks");
    for (auto* pools : {&k_, &v_}) {
      ClMem m = d->alloc(size_t(bytes));
      // Zero pools: slots never written read as 0, not NaN (kernels mask them anyway).
      const uint16_t zero = 0;
      CL_CHECK(clEnqueueFillBuffer(d->queue(), m.get(), &zero, sizeof(zero), 0, size_t(bytes), 0,
                                   nullptr, nullptr),
               d->info().label());
      pools->push_back(std::move(m));
    }
  }
}

KvLayerView PagedKvCache::layer(int32_t l) const {
  if (l < 0 || l >= config_.n_layer)
    throw KvCacheUsageError("kv cache: layer " + std::to_string(l) + " outside [0, " +
                            std::to_string(config_.n_layer) + ")");
  return {k_[size_t(l)].get(), v_[size_t(l)].get()};
}

const Device& PagedKvCache::device(int32_t l) const {
  layer(l);  // range check
  return *devices_[size_t(l)];
}

std::optional<KvReservation> PagedKvCache::try_reserve(SeqId seq, int32_t n_tokens) {
  auto r = blocks_.try_reserve(seq, n_tokens);
  if (r) copy_blocks(r->copies);
  return r;
}

KvReservation PagedKvCache::reserve(SeqId seq, int32_t n_tokens) {
  KvReservation r = blocks_.reserve(seq, n_tokens);
  copy_blocks(r.copies);
  return r;
}

void PagedKvCache::copy_blocks(const std::vector<KvBlockCopy>& copies) {
  const size_t bb = size_t(layout_.block_bytes());
  for (const KvBlockCopy& c : copies) {
    for (int32_t l = 0; l < config_.n_layer; ++l) {
      const Device& d = *devices_[size_t(l)];
      for (const ClMem* pool : {&k_[size_t(l)], &v_[size_t(l)]}) {
        CL_CHECK(clEnqueueCopyBuffer(d.queue(), pool->get(), pool->get(), size_t(c.src) * bb,
                                     size_t(c.dst) * bb, bb, 0, nullptr, nullptr),
                 d.info().label());
      }
    }
  }
}

}  // namespace tessera::kv
