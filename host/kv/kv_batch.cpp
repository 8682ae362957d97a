// Packing one batch's block tables and per-token metadata into a device buffer.
#include "host/kv/kv_batch.h"

#include <algorithm>
#include <string>

namespace tessera::kv {

KvBatchBuffers::KvBatchBuffers(const Device& device) : device_(&device) {}

KvBatchView KvBatchBuffers::upload(const KvBlockManager& blocks, std::span<const SeqId> seqs,
                                   std::span<const int32_t> token_seq,
                                   std::span<const int32_t> token_pos) {
  auto bad = [](const std::string& what) { throw KvCacheUsageError("kv batch: " + what); };
  if (token_seq.size() != token_pos.size())
    bad("token_seq has " + std::to_string(token_seq.size()) + " entries, token_pos " +
        std::to_string(token_pos.size()));
  const size_t n_seqs = seqs.size();
  const size_t n_tokens = token_seq.size();
  size_t stride = 1;
  for (SeqId s : seqs) {
    if (!blocks.contains(s)) bad("sequence " + std::to_string(s) + " does not exist");
    stride = std::max(stride, blocks.block_table(s).size());
  }
  const int32_t bs = blocks.block_size();
  slots_host_.resize(n_tokens);
  int32_t max_context = 0;
  for (size_t t = 0; t < n_tokens; ++t) {
    const int32_t row = token_seq[t];
    if (row < 0 || size_t(row) >= n_seqs)
      bad("token " + std::to_string(t) + ": sequence row " + std::to_string(row) + " outside [0, " +
          std::to_string(n_seqs) + ")");
    const SeqId s = seqs[size_t(row)];
    const int32_t pos = token_pos[t];
    if (pos < 0 || pos >= blocks.length(s))
      bad("token " + std::to_string(t) + ": position " + std::to_string(pos) + " of sequence " +
          std::to_string(s) + " is not reserved (length " + std::to_string(blocks.length(s)) + ")");
    slots_host_[t] = blocks.block_table(s)[size_t(pos / bs)] * bs + pos % bs;
    max_context = std::max(max_context, pos + 1);
  }

  KvBatchView v;
  v.block_tables_offset = 0;
  v.block_table_stride = uint32_t(stride);
  v.token_seq_offset = uint32_t(n_seqs * stride);
  v.token_pos_offset = uint32_t(v.token_seq_offset + n_tokens);
  v.token_slot_offset = uint32_t(v.token_pos_offset + n_tokens);
  v.n_seqs = int32_t(n_seqs);
  v.n_tokens = int32_t(n_tokens);
  v.max_context = max_context;
  const size_t total = v.token_slot_offset + n_tokens;

  Ring& r = ring_[size_t(next_)];
  next_ ^= 1;
  if (r.written) {  // the host copy of two uploads ago must have reached the device
    CL_CHECK(clWaitForEvents(1, r.written.ptr()), device_->info().label());
    r.written.reset();
  }
  r.host.assign(total, -1);
  for (size_t i = 0; i < n_seqs; ++i) {
    auto table = blocks.block_table(seqs[i]);
    std::copy(table.begin(), table.end(), r.host.begin() + ptrdiff_t(i * stride));
  }
  std::copy(token_seq.begin(), token_seq.end(), r.host.begin() + v.token_seq_offset);
  std::copy(token_pos.begin(), token_pos.end(), r.host.begin() + v.token_pos_offset);
  std::copy(slots_host_.begin(), slots_host_.end(), r.host.begin() + v.token_slot_offset);
  if (total > r.capacity) {
    r.capacity = std::max(total, r.capacity * 2);  // grows rarely: steps reuse the buffer
    r.mem = device_->alloc(r.capacity * sizeof(int32_t), CL_MEM_READ_ONLY);
  }
  CL_CHECK(clEnqueueWriteBuffer(device_->queue(), r.mem.get(), CL_FALSE, 0, total * sizeof(int32_t),
                                r.host.data(), 0, nullptr, r.written.out()),
           device_->info().label());
  v.meta = r.mem.get();
  view_ = v;
  return v;
}

}  // namespace tessera::kv
