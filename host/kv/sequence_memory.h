// A sequence's memory across every layer kind, behind one set of operations: create / fork / free
// / try_reserve / reserve are routed to the paged KV cache (attention layers, per window group) and
// to the recurrent-state pool (recurrent layers). Either part may be absent (a model without
// attention or without recurrent layers).
#pragma once

#include <memory>
#include <optional>
#include <unordered_map>

#include "host/kv/paged_kv_cache.h"
#include "host/kv/recurrent_state_pool.h"

namespace tessera::kv {

// Thread-safety: none; the engine thread calls every method.
class SequenceMemory {
 public:
  // At least one of the two must be given.
  SequenceMemory(std::unique_ptr<PagedKvCache> kv, std::unique_ptr<RecurrentStatePool> states);

  // A new empty sequence: no KV block yet, a zeroed recurrent state. Throws KvCacheFullError (and
  // changes nothing) when the recurrent pool has no free slot.
  SeqId create();
  // A new sequence continuing `parent`: KV blocks shared (copy-on-write), recurrent state copied.
  SeqId fork(SeqId parent);
  // Releases everything the sequence holds.
  void free(SeqId seq);
  // Room for `n_tokens` more positions (KV blocks; recurrent state is fixed-size). nullopt /
  // KvCacheFullError as PagedKvCache. The reservation is the KV cache's (empty slots without one).
  std::optional<KvReservation> try_reserve(SeqId seq, int32_t n_tokens);
  KvReservation reserve(SeqId seq, int32_t n_tokens);

  bool contains(SeqId seq) const;
  int32_t length(SeqId seq) const;  // positions reserved so far

  PagedKvCache* kv() { return kv_.get(); }  // null without attention layers
  const PagedKvCache* kv() const { return kv_.get(); }
  RecurrentStatePool* states() { return states_.get(); }  // null without recurrent layers
  const RecurrentStatePool* states() const { return states_.get(); }

 private:
  std::unique_ptr<PagedKvCache> kv_;
  std::unique_ptr<RecurrentStatePool> states_;
  // Without a KV cache the ids and lengths are kept here.
  SeqId next_id_ = 0;
  std::unordered_map<SeqId, int32_t> lengths_;
};

}  // namespace tessera::kv
