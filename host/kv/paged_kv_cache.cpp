// Paged KV cache: the pool layouts, pool allocation per layer, the layer groups and the device
// copies behind copy-on-write.
#include "host/kv/paged_kv_cache.h"

#include <algorithm>
#include <string>

namespace tessera::kv {

namespace {
[[noreturn]] void bad(const std::string& what) {
  throw KvCacheUsageError("kv cache config: " + what);
}

// Checks the config and decides every layer's K and V layout.
std::vector<std::array<KvPoolLayout, 2>> layouts_of(const KvCacheConfig& c) {
  if (c.n_layer < 1) bad("n_layer " + std::to_string(c.n_layer) + " must be >= 1");
  if (c.head_dim < 1) bad("head_dim " + std::to_string(c.head_dim) + " must be >= 1");
  if (c.block_size < 1) bad("block_size " + std::to_string(c.block_size) + " must be >= 1");
  if (c.n_blocks < 1) bad("n_blocks " + std::to_string(c.n_blocks) + " must be >= 1");
  if (int64_t(c.n_blocks) * c.block_size > INT32_MAX)
    bad("n_blocks * block_size exceeds int32 slot indices");
  for (const size_t n : {c.layer_n_head_kv.size(), c.layer_window.size(), c.layer_k_format.size(),
                         c.layer_v_format.size()})
    if (n != 0 && n != size_t(c.n_layer))
      bad("a per-layer list has " + std::to_string(n) + " entries for " +
          std::to_string(c.n_layer) + " layers");
  std::vector<std::array<KvPoolLayout, 2>> out;
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const int32_t heads = c.layer_n_head_kv.empty() ? c.n_head_kv : c.layer_n_head_kv[size_t(l)];
    // 0: a layer without KV (a recurrent mixer's): no pools, nothing to copy.
    if (heads < 0)
      bad("layer " + std::to_string(l) + ": n_head_kv " + std::to_string(heads) + " must be >= 0");
    const KvFormat kf = c.layer_k_format.empty() ? c.k_format : c.layer_k_format[size_t(l)];
    const KvFormat vf = c.layer_v_format.empty() ? c.v_format : c.layer_v_format[size_t(l)];
    for (const auto& [f, part] : {std::pair{kf, "K"}, std::pair{vf, "V"}})
      if (const std::string why = kv_format_problem(f, uint32_t(c.head_dim)); !why.empty())
        bad("layer " + std::to_string(l) + " " + part + ": " + why);
    if (const std::string why = kv_format_value_problem(vf); !why.empty())
      bad("layer " + std::to_string(l) + " V: " + why);
    out.push_back({KvPoolLayout{kf, c.n_blocks, c.block_size, heads, c.head_dim},
                   KvPoolLayout{vf, c.n_blocks, c.block_size, heads, c.head_dim}});
  }
  return out;
}
}  // namespace

uint64_t kv_bytes_per_block(const KvCacheConfig& c) {
  KvCacheConfig one = c;
  one.n_blocks = 1;
  uint64_t bytes = 0;
  for (const auto& kv : layouts_of(one)) bytes += kv[0].block_bytes() + kv[1].block_bytes();
  return bytes;
}

PagedKvCache::PagedKvCache(const KvCacheConfig& config, std::vector<const Device*> layer_devices)
    : config_(config), layouts_(layouts_of(config)), devices_(std::move(layer_devices)) {
  if (devices_.size() != size_t(config_.n_layer))
    bad(std::to_string(devices_.size()) + " layer devices given for " +
        std::to_string(config_.n_layer) + " layers");
  for (int32_t l = 0; l < config_.n_layer; ++l) {
    const int32_t window = config_.layer_window.empty() ? 0 : config_.layer_window[size_t(l)];
    if (window < 0) bad("layer " + std::to_string(l) + ": negative window");
    auto g = std::find_if(groups_.begin(), groups_.end(),
                          [&](const Group& x) { return x.window == window; });
    if (g == groups_.end()) {
      groups_.push_back({window, {}, KvBlockManager(config_.n_blocks, config_.block_size, window)});
      g = groups_.end() - 1;
    }
    g->layers.push_back(l);
    group_of_.push_back(int32_t(g - groups_.begin()));
  }
  for (int32_t l = 0; l < config_.n_layer; ++l) {
    const Device* d = devices_[size_t(l)];
    if (!d) throw KvCacheUsageError("kv cache: layer " + std::to_string(l) + " has no device");
    for (KvPart part : {KvPart::kK, KvPart::kV}) {
      const uint64_t bytes = layout(l, part).pool_bytes();
      if (bytes == 0) {  // a layer without KV heads
        (part == KvPart::kK ? k_ : v_).emplace_back();
        continue;
      }
      if (bytes > d->info().max_alloc_bytes)
        throw KvCacheUsageError("kv cache: layer " + std::to_string(l) + " pool of " +
                                std::to_string(bytes) + " bytes exceeds the max allocation (" +
                                std::to_string(d->info().max_alloc_bytes) + ") of " +
                                d->info().label() + "; use fewer blocks");
      ClMem m = d->alloc(size_t(bytes));
      // Zero pools: slots never written read as 0, not NaN (kernels mask them anyway).
      const uint16_t zero = 0;
      CL_CHECK(clEnqueueFillBuffer(d->queue(), m.get(), &zero, sizeof(zero), 0, size_t(bytes), 0,
                                   nullptr, nullptr),
               d->info().label());
      (part == KvPart::kK ? k_ : v_).push_back(std::move(m));
    }
  }
}

void PagedKvCache::check_layer(int32_t l) const {
  if (l < 0 || l >= config_.n_layer)
    throw KvCacheUsageError("kv cache: layer " + std::to_string(l) + " outside [0, " +
                            std::to_string(config_.n_layer) + ")");
}

const KvPoolLayout& PagedKvCache::layout(int32_t l, KvPart part) const {
  check_layer(l);
  return layouts_[size_t(l)][size_t(part)];
}

KvLayerView PagedKvCache::layer(int32_t l) const {
  check_layer(l);
  return {k_[size_t(l)].get(), v_[size_t(l)].get()};
}

const Device& PagedKvCache::device(int32_t l) const {
  check_layer(l);
  return *devices_[size_t(l)];
}

int32_t PagedKvCache::group_of(int32_t l) const {
  check_layer(l);
  return group_of_[size_t(l)];
}

SeqId PagedKvCache::create_sequence() {
  const SeqId id = groups_[0].blocks.create_sequence();
  for (size_t g = 1; g < groups_.size(); ++g) groups_[g].blocks.create_sequence();
  return id;
}

SeqId PagedKvCache::fork_sequence(SeqId parent) {
  const SeqId id = groups_[0].blocks.fork_sequence(parent);  // checks parent exists
  for (size_t g = 1; g < groups_.size(); ++g) groups_[g].blocks.fork_sequence(parent);
  return id;
}

void PagedKvCache::free_sequence(SeqId seq) {
  for (auto& g : groups_) g.blocks.free_sequence(seq);
}

std::optional<KvReservation> PagedKvCache::try_reserve(SeqId seq, int32_t n_tokens) {
  // Every group or none: check them all before taking blocks from any.
  for (const auto& g : groups_)
    if (g.blocks.blocks_needed(seq, n_tokens) > g.blocks.blocks_free()) return std::nullopt;
  std::optional<KvReservation> first;
  for (auto& g : groups_) {
    auto r = g.blocks.try_reserve(seq, n_tokens);
    copy_blocks(g, r->copies);
    if (!first) first = std::move(r);
  }
  return first;
}

KvReservation PagedKvCache::reserve(SeqId seq, int32_t n_tokens) {
  for (auto& g : groups_)
    if (g.blocks.blocks_needed(seq, n_tokens) > g.blocks.blocks_free())
      return g.blocks.reserve(seq, n_tokens);  // throws KvCacheFullError naming the shortfall
  return *try_reserve(seq, n_tokens);
}

void PagedKvCache::copy_blocks(const Group& g, const std::vector<KvBlockCopy>& copies) {
  for (const KvBlockCopy& c : copies) {
    for (int32_t l : g.layers) {
      const Device& d = *devices_[size_t(l)];
      for (KvPart part : {KvPart::kK, KvPart::kV}) {
        const size_t bb = size_t(layout(l, part).block_bytes());
        if (bb == 0) continue;  // a layer without KV heads
        const cl_mem pool = (part == KvPart::kK ? k_ : v_)[size_t(l)].get();
        CL_CHECK(clEnqueueCopyBuffer(d.queue(), pool, pool, size_t(c.src) * bb, size_t(c.dst) * bb,
                                     bb, 0, nullptr, nullptr),
                 d.info().label());
      }
    }
  }
}

}  // namespace tessera::kv
