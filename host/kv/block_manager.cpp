// Block allocation, reference counting and copy-on-write of the paged KV cache's bookkeeping.
#include "host/kv/block_manager.h"

#include <algorithm>
#include <utility>

namespace tessera::kv {

namespace {
std::string seq_name(SeqId seq) {
  return "sequence " + std::to_string(seq);
}
}  // namespace

KvBlockManager::KvBlockManager(int32_t n_blocks, int32_t block_size, int32_t window)
    : block_size_(block_size), window_(window) {
  if (n_blocks < 1 || block_size < 1)
    throw KvCacheUsageError("KvBlockManager: n_blocks (" + std::to_string(n_blocks) +
                            ") and block_size (" + std::to_string(block_size) + ") must be >= 1");
  if (window < 0)
    throw KvCacheUsageError("KvBlockManager: window " + std::to_string(window) + " must be >= 0");
  refs_.assign(size_t(n_blocks), 0);
  free_.resize(size_t(n_blocks));
  // Stack order: block 0 is handed out first, which keeps fresh pools easy to read in tests.
  for (int32_t i = 0; i < n_blocks; ++i) free_[size_t(i)] = n_blocks - 1 - i;
}

const KvBlockManager::Sequence& KvBlockManager::get(SeqId seq, const char* what) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end())
    throw KvCacheUsageError(std::string("kv cache ") + what + ": " + seq_name(seq) +
                            " does not exist (never created or already freed)");
  return it->second;
}

KvBlockManager::Sequence& KvBlockManager::get(SeqId seq, const char* what) {
  return const_cast<Sequence&>(std::as_const(*this).get(seq, what));
}

SeqId KvBlockManager::create_sequence() {
  const SeqId id = next_id_++;
  seqs_.emplace(id, Sequence{});
  return id;
}

SeqId KvBlockManager::fork_sequence(SeqId parent) {
  Sequence copy = get(parent, "fork_sequence");
  for (int32_t b : copy.blocks)
    if (b >= 0) ++refs_[size_t(b)];
  const SeqId id = next_id_++;
  seqs_.emplace(id, std::move(copy));
  return id;
}

void KvBlockManager::free_sequence(SeqId seq) {
  Sequence& s = get(seq, "free_sequence");
  for (int32_t b : s.blocks)
    if (b >= 0) release_block(b);
  seqs_.erase(seq);
}

int32_t KvBlockManager::blocks_needed(SeqId seq, int32_t n_tokens) const {
  const Sequence& s = get(seq, "blocks_needed");
  if (n_tokens < 0)
    throw KvCacheUsageError("kv cache reserve: " + seq_name(seq) + ": negative token count " +
                            std::to_string(n_tokens));
  const int64_t new_len = int64_t(s.length) + n_tokens;
  const int64_t total = (new_len + block_size_ - 1) / block_size_;
  int64_t need = total - int64_t(s.blocks.size());
  // Appending into a shared, partially filled last block first takes a private copy of it.
  if (n_tokens > 0 && s.length % block_size_ != 0 && refs_[size_t(s.blocks.back())] > 1) ++need;
  return int32_t(std::min<int64_t>(need, INT32_MAX));
}

std::optional<KvReservation> KvBlockManager::try_reserve(SeqId seq, int32_t n_tokens) {
  const int32_t need = blocks_needed(seq, n_tokens);  // validates seq and n_tokens
  Sequence& s = get(seq, "reserve");
  if (int64_t(s.length) + n_tokens > INT32_MAX / 2)
    throw KvCacheUsageError("kv cache reserve: " + seq_name(seq) + ": length would exceed int32");
  if (need > blocks_free()) return std::nullopt;

  KvReservation r;
  r.first_pos = s.length;
  if (n_tokens > 0 && s.length % block_size_ != 0 && refs_[size_t(s.blocks.back())] > 1) {
    const int32_t fresh = take_block();
    r.copies.push_back({s.blocks.back(), fresh});
    release_block(s.blocks.back());  // still held by another sequence: never freed here
    s.blocks.back() = fresh;
  }
  const int32_t new_len = s.length + n_tokens;
  while (int64_t(s.blocks.size()) * block_size_ < new_len) s.blocks.push_back(take_block());
  r.slots.reserve(size_t(n_tokens));
  for (int32_t p = s.length; p < new_len; ++p)
    r.slots.push_back(s.blocks[size_t(p / block_size_)] * block_size_ + p % block_size_);
  s.length = new_len;
  if (window_ > 0 && n_tokens > 0) {
    // The first new token attends to [first_pos - window + 1, first_pos]; later ones to later
    // positions. Blocks wholly before that are no longer read.
    const int64_t keep_from = int64_t(r.first_pos) - window_ + 1;
    for (size_t b = 0; int64_t(b + 1) * block_size_ <= keep_from; ++b) {
      if (s.blocks[b] < 0) continue;
      release_block(s.blocks[b]);
      s.blocks[b] = -1;
    }
  }
  return r;
}

KvReservation KvBlockManager::reserve(SeqId seq, int32_t n_tokens) {
  auto r = try_reserve(seq, n_tokens);
  if (!r)
    throw KvCacheFullError("kv cache full: " + seq_name(seq) + " needs " +
                           std::to_string(blocks_needed(seq, n_tokens)) + " new blocks for " +
                           std::to_string(n_tokens) + " tokens, " + std::to_string(blocks_free()) +
                           " of " + std::to_string(n_blocks()) + " blocks are free");
  return std::move(*r);
}

int32_t KvBlockManager::length(SeqId seq) const {
  return get(seq, "length").length;
}

std::span<const int32_t> KvBlockManager::block_table(SeqId seq) const {
  return get(seq, "block_table").blocks;
}

int32_t KvBlockManager::blocks_held(SeqId seq) const {
  const auto& blocks = get(seq, "blocks_held").blocks;
  return int32_t(std::count_if(blocks.begin(), blocks.end(), [](int32_t b) { return b >= 0; }));
}

int32_t KvBlockManager::slot(SeqId seq, int32_t pos) const {
  const Sequence& s = get(seq, "slot");
  if (pos < 0 || pos >= s.length)
    throw KvCacheUsageError("kv cache slot: " + seq_name(seq) + ": position " +
                            std::to_string(pos) + " outside [0, " + std::to_string(s.length) + ")");
  const int32_t block = s.blocks[size_t(pos / block_size_)];
  if (block < 0)
    throw KvCacheUsageError("kv cache slot: " + seq_name(seq) + ": position " +
                            std::to_string(pos) + " fell out of the window of " +
                            std::to_string(window_) + " tokens");
  return block * block_size_ + pos % block_size_;
}

int32_t KvBlockManager::block_refs(int32_t block) const {
  if (block < 0 || block >= n_blocks())
    throw KvCacheUsageError("kv cache block_refs: block " + std::to_string(block) +
                            " outside [0, " + std::to_string(n_blocks()) + ")");
  return refs_[size_t(block)];
}

int32_t KvBlockManager::take_block() {
  const int32_t b = free_.back();  // callers checked blocks_free() first
  free_.pop_back();
  refs_[size_t(b)] = 1;
  return b;
}

void KvBlockManager::release_block(int32_t block) {
  if (--refs_[size_t(block)] == 0) free_.push_back(block);
}

}  // namespace tessera::kv
