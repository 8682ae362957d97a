// Host-side bookkeeping of the paged KV cache: the free list of fixed-size blocks, one block table
// per sequence, reference counts for prefix blocks shared between forked sequences, and the
// copy-on-write of a shared, partially filled last block. Knows nothing about devices.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "host/common/error.h"

namespace tessera::kv {

using SeqId = int32_t;

// The pool has too few free blocks for a reservation (reserve()); try_reserve() reports the same
// condition by returning nullopt. Either way nothing was changed.
struct KvCacheFullError : TesseraError {
  using TesseraError::TesseraError;
};

// A call named a sequence that does not exist (never created or already freed), or had a bad
// argument (negative token count).
struct KvCacheUsageError : TesseraError {
  using TesseraError::TesseraError;
};

// A device copy the caller must perform before writing the reserved slots: block `src`'s contents
// (all layers, K and V) into block `dst`. Produced by copy-on-write.
struct KvBlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
};

// Result of reserving n new tokens of a sequence.
struct KvReservation {
  int32_t first_pos = 0;            // position of the first new token (the old length)
  std::vector<int32_t> slots;       // slot of each new token: block * block_size + offset
  std::vector<KvBlockCopy> copies;  // block copies to do first (0 or 1, copy-on-write)
};

// Thread-safety: none. Only the engine thread calls the mutating methods (create_sequence,
// fork_sequence, free_sequence, try_reserve/reserve); const queries may run on that thread too.
class KvBlockManager {
 public:
  // `n_blocks` >= 1 blocks of `block_size` >= 1 tokens. Throws KvCacheUsageError otherwise.
  // `window` > 0: the layers served attend to their last `window` positions only, so a reservation
  // releases the blocks that fell out of the window of its first new token (their block-table
  // entries become -1); 0 keeps every block until the sequence is freed.
  KvBlockManager(int32_t n_blocks, int32_t block_size, int32_t window = 0);

  // A new empty sequence. Never fails: an empty sequence holds no block.
  SeqId create_sequence();
  // A new sequence with `parent`'s tokens: it shares every block of the parent (reference counted,
  // read-only). The first of the two to append into a shared, partially filled last block gets a
  // private copy of it (see KvReservation::copies). Allocates nothing.
  SeqId fork_sequence(SeqId parent);
  // Releases the sequence; its blocks return to the free list when no other sequence holds them.
  void free_sequence(SeqId seq);

  // Reserves `n_tokens` new positions at the end of `seq`: allocates the blocks they need (and the
  // copy-on-write block), then, with a window, releases the blocks wholly before position
  // first_pos - window + 1. Returns nullopt, changing nothing, when the pool has too few free
  // blocks (back-pressure for the scheduler).
  std::optional<KvReservation> try_reserve(SeqId seq, int32_t n_tokens);
  // Same, but throws KvCacheFullError naming the sequence and the shortfall.
  KvReservation reserve(SeqId seq, int32_t n_tokens);

  // Blocks that try_reserve(seq, n_tokens) would take from the free list now (admission control).
  int32_t blocks_needed(SeqId seq, int32_t n_tokens) const;

  bool contains(SeqId seq) const { return seqs_.count(seq) != 0; }
  int32_t length(SeqId seq) const;                        // tokens stored (reserved) so far
  std::span<const int32_t> block_table(SeqId seq) const;  // its blocks in position order; -1 for
                                                          // blocks released by the window
  int32_t blocks_held(SeqId seq) const;                   // entries of the table that are not -1
  int32_t slot(SeqId seq, int32_t pos) const;             // slot of position pos (< length)
  int32_t block_refs(int32_t block) const;                // sequences holding the block (0 = free)

  int32_t n_blocks() const { return int32_t(refs_.size()); }
  int32_t block_size() const { return block_size_; }
  int32_t window() const { return window_; }
  int32_t blocks_free() const { return int32_t(free_.size()); }
  int32_t blocks_used() const { return n_blocks() - blocks_free(); }
  int32_t n_sequences() const { return int32_t(seqs_.size()); }

 private:
  struct Sequence {
    int32_t length = 0;
    std::vector<int32_t> blocks;
  };
  const Sequence& get(SeqId seq, const char* what) const;
  Sequence& get(SeqId seq, const char* what);
  int32_t take_block();
  void release_block(int32_t block);

  int32_t block_size_;
  int32_t window_ = 0;
  std::vector<int32_t> refs_;  // per block
  std::vector<int32_t> free_;  // stack: the most recently freed block is reused first
  std::unordered_map<SeqId, Sequence> seqs_;
  SeqId next_id_ = 0;
};

}  // namespace tessera::kv
