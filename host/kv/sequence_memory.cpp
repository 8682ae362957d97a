// Routing of sequence operations to the KV cache and the recurrent-state pool.
#include "host/kv/sequence_memory.h"

#include <string>

namespace tessera::kv {

SequenceMemory::SequenceMemory(std::unique_ptr<PagedKvCache> kv,
                               std::unique_ptr<RecurrentStatePool> states)
    : kv_(std::move(kv)), states_(std::move(states)) {
  if (!kv_ && !states_)
    throw KvCacheUsageError("sequence memory: neither a KV cache nor a recurrent-state pool");
}

SeqId SequenceMemory::create() {
  if (states_ && states_->slots_free() == 0)
    throw KvCacheFullError("sequence memory full: all " + std::to_string(states_->n_slots()) +
                           " recurrent-state slots are taken");
  const SeqId id = kv_ ? kv_->create_sequence() : next_id_++;
  if (!kv_) lengths_[id] = 0;
  if (states_) states_->create(id);
  return id;
}

SeqId SequenceMemory::fork(SeqId parent) {
  if (!contains(parent))
    throw KvCacheUsageError("sequence memory fork: sequence " + std::to_string(parent) +
                            " does not exist (never created or already freed)");
  if (states_ && states_->slots_free() == 0)
    throw KvCacheFullError("sequence memory full: all " + std::to_string(states_->n_slots()) +
                           " recurrent-state slots are taken");
  const SeqId id = kv_ ? kv_->fork_sequence(parent) : next_id_++;
  if (!kv_) lengths_[id] = lengths_.at(parent);
  if (states_) states_->fork(parent, id);
  return id;
}

void SequenceMemory::free(SeqId seq) {
  if (!contains(seq))
    throw KvCacheUsageError("sequence memory free: sequence " + std::to_string(seq) +
                            " does not exist (never created or already freed)");
  if (kv_)
    kv_->free_sequence(seq);
  else
    lengths_.erase(seq);
  if (states_) states_->free(seq);
}

std::optional<KvReservation> SequenceMemory::try_reserve(SeqId seq, int32_t n_tokens) {
  if (kv_) return kv_->try_reserve(seq, n_tokens);
  if (!contains(seq))
    throw KvCacheUsageError("sequence memory reserve: sequence " + std::to_string(seq) +
                            " does not exist (never created or already freed)");
  if (n_tokens < 0)
    throw KvCacheUsageError("sequence memory reserve: negative token count " +
                            std::to_string(n_tokens));
  KvReservation r;
  r.first_pos = lengths_[seq];
  lengths_[seq] += n_tokens;
  return r;
}

KvReservation SequenceMemory::reserve(SeqId seq, int32_t n_tokens) {
  if (kv_) return kv_->reserve(seq, n_tokens);
  return *try_reserve(seq, n_tokens);
}

bool SequenceMemory::contains(SeqId seq) const {
  return kv_ ? kv_->blocks().contains(seq) : lengths_.count(seq) != 0;
}

int32_t SequenceMemory::length(SeqId seq) const {
  if (kv_) return kv_->blocks().length(seq);
  auto it = lengths_.find(seq);
  if (it == lengths_.end())
    throw KvCacheUsageError("sequence memory length: sequence " + std::to_string(seq) +
                            " does not exist (never created or already freed)");
  return it->second;
}

}  // namespace tessera::kv
