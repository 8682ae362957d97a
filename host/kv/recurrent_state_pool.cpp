// Recurrent state slots: allocation, zeroing, fork copies.
#include "host/kv/recurrent_state_pool.h"

#include <string>

namespace tessera::kv {

RecurrentStatePool::RecurrentStatePool(const RecurrentStateConfig& config,
                                       std::vector<const Device*> layer_devices)
    : config_(config), devices_(std::move(layer_devices)) {
  auto bad = [](const std::string& what) {
    throw KvCacheUsageError("recurrent state config: " + what);
  };
  if (config_.max_sequences < 1)
    bad("max_sequences " + std::to_string(config_.max_sequences) + " must be >= 1");
  if (devices_.size() != config_.layer_bytes.size())
    bad(std::to_string(devices_.size()) + " layer devices given for " +
        std::to_string(config_.layer_bytes.size()) + " layers");
  for (size_t l = 0; l < devices_.size(); ++l) {
    const uint64_t bytes = config_.layer_bytes[l] * uint64_t(config_.max_sequences);
    if (bytes == 0) {
      states_.emplace_back();
      continue;
    }
    const Device* d = devices_[l];
    if (!d) bad("layer " + std::to_string(l) + " has no device");
    if (bytes > d->info().max_alloc_bytes)
      bad("layer " + std::to_string(l) + ": " + std::to_string(bytes) +
          " bytes exceed the max allocation of " + d->info().label());
    states_.push_back(d->alloc(size_t(bytes)));
  }
  for (int32_t s = config_.max_sequences - 1; s >= 0; --s) free_.push_back(s);
}

int32_t RecurrentStatePool::take(SeqId seq) {
  if (contains(seq))
    throw KvCacheUsageError("recurrent state: sequence " + std::to_string(seq) +
                            " already has a slot");
  if (free_.empty())
    throw KvCacheFullError("recurrent state full: all " + std::to_string(n_slots()) +
                           " slots are taken (sequence " + std::to_string(seq) + ")");
  const int32_t s = free_.back();
  free_.pop_back();
  slot_of_[seq] = s;
  return s;
}

void RecurrentStatePool::create(SeqId seq) {
  const int32_t s = take(seq);
  for (size_t l = 0; l < states_.size(); ++l) {
    if (!states_[l]) continue;
    const Device& d = *devices_[l];
    const uint64_t bytes = config_.layer_bytes[l];
    const uint8_t zero = 0;
    CL_CHECK(clEnqueueFillBuffer(d.queue(), states_[l].get(), &zero, 1, size_t(s) * bytes,
                                 size_t(bytes), 0, nullptr, nullptr),
             d.info().label());
  }
}

void RecurrentStatePool::fork(SeqId parent, SeqId child) {
  const int32_t from = slot(parent);
  const int32_t to = take(child);
  for (size_t l = 0; l < states_.size(); ++l) {
    if (!states_[l]) continue;
    const Device& d = *devices_[l];
    const uint64_t bytes = config_.layer_bytes[l];
    CL_CHECK(
        clEnqueueCopyBuffer(d.queue(), states_[l].get(), states_[l].get(), size_t(from) * bytes,
                            size_t(to) * bytes, size_t(bytes), 0, nullptr, nullptr),
        d.info().label());
  }
}

void RecurrentStatePool::free(SeqId seq) {
  const int32_t s = slot(seq);
  slot_of_.erase(seq);
  free_.push_back(s);
}

int32_t RecurrentStatePool::slot(SeqId seq) const {
  auto it = slot_of_.find(seq);
  if (it == slot_of_.end())
    throw KvCacheUsageError("recurrent state: sequence " + std::to_string(seq) +
                            " does not exist (never created or already freed)");
  return it->second;
}

cl_mem RecurrentStatePool::layer(int32_t l) const {
  if (l < 0 || size_t(l) >= states_.size())
    throw KvCacheUsageError("recurrent state: layer " + std::to_string(l) + " outside [0, " +
                            std::to_string(states_.size()) + ")");
  return states_[size_t(l)].get();
}

uint64_t RecurrentStatePool::layer_bytes(int32_t l) const {
  layer(l);  // range check
  return config_.layer_bytes[size_t(l)];
}

}  // namespace tessera::kv
