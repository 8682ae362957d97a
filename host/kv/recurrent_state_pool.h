// Fixed-size per-sequence state of recurrent layers (Mamba2's SSM state, Gated DeltaNet's
// matrix memory): per layer one device buffer of `max_sequences` slots of that layer's bytes. A
// sequence takes a slot at create (zero-filled), a fork copies the parent's slot into its own on
// every layer's device, and free returns the slot. No layer kind uses it yet; SequenceMemory
// routes to it so recurrent mixers have their memory when they are added.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "devices/device.h"
#include "host/kv/block_manager.h"

namespace tessera::kv {

struct RecurrentStateConfig {
  std::vector<uint64_t> layer_bytes;  // per layer: state bytes per sequence (0: no state)
  int32_t max_sequences = 0;          // slots
};

// Thread-safety: none; the engine thread calls every method (they enqueue on the layers' queues).
class RecurrentStatePool {
 public:
  // `layer_devices[l]` holds layer l's states (pointers outlive the pool). Throws
  // KvCacheUsageError on a bad config or a buffer over a device's max allocation.
  RecurrentStatePool(const RecurrentStateConfig& config, std::vector<const Device*> layer_devices);

  // A slot for `seq`, its state zeroed on every layer. Throws KvCacheFullError when every slot is
  // taken, KvCacheUsageError when `seq` already has one.
  void create(SeqId seq);
  // `child` gets a slot holding a copy of `parent`'s state (copied on the devices' queues).
  void fork(SeqId parent, SeqId child);
  void free(SeqId seq);

  bool contains(SeqId seq) const { return slot_of_.count(seq) != 0; }
  int32_t slot(SeqId seq) const;  // of a held sequence
  int32_t slots_free() const { return int32_t(free_.size()); }
  int32_t n_slots() const { return config_.max_sequences; }
  cl_mem layer(int32_t l) const;          // layer l's buffer (null when it has no state)
  uint64_t layer_bytes(int32_t l) const;  // per sequence

 private:
  int32_t take(SeqId seq);

  RecurrentStateConfig config_;
  std::vector<const Device*> devices_;
  std::vector<ClMem> states_;  // per layer
  std::vector<int32_t> free_;  // stack of free slots
  std::unordered_map<SeqId, int32_t> slot_of_;
};

}  // namespace tessera::kv
