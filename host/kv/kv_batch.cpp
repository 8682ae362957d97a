// Packing one batch's block tables and per-token metadata into a device buffer.
#include "host/kv/kv_batch.h"

#include <algorithm>
#include <string>

namespace tessera::kv {

KvBatchBuffers::KvBatchBuffers(const Device& device, int32_t min_table_stride, int32_t max_seqs,
                               int32_t max_tokens)
    : device_(&device), min_stride_(std::max<int32_t>(1, min_table_stride)) {
  if (max_seqs > 0 && max_tokens > 0) {
    // Block tables, token_seq / token_pos / token_slot and max_context of the largest batch.
    capacity_ = size_t(max_seqs) * size_t(min_stride_) + 3 * size_t(max_tokens) + 1;
    mem_ = device_->alloc(capacity_ * sizeof(int32_t), CL_MEM_READ_ONLY);
  }
}

KvBatchView KvBatchBuffers::upload(const KvBlockManager& blocks, std::span<const SeqId> seqs,
                                   std::span<const int32_t> token_seq,
                                   std::span<const int32_t> token_pos) {
  auto bad = [](const std::string& what) { throw KvCacheUsageError("kv batch: " + what); };
  if (token_seq.size() != token_pos.size())
    bad("token_seq has " + std::to_string(token_seq.size()) + " entries, token_pos " +
        std::to_string(token_pos.size()));
  const size_t n_seqs = seqs.size();
  const size_t n_tokens = token_seq.size();
  size_t stride = size_t(min_stride_);
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
  v.max_context_offset = uint32_t(v.token_slot_offset + n_tokens);
  v.n_seqs = int32_t(n_seqs);
  v.n_tokens = int32_t(n_tokens);
  v.max_context = max_context;
  v.context_capacity = int32_t(stride) * bs;
  const size_t total = v.max_context_offset + 1;

  HostCopy& r = ring_[size_t(next_)];
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
  r.host[v.max_context_offset] = max_context;
  if (total > capacity_) {
    // Grows rarely: steps reuse the buffer. Kernels still queued keep the old one alive.
    capacity_ = std::max(total, capacity_ * 2);
    mem_ = device_->alloc(capacity_ * sizeof(int32_t), CL_MEM_READ_ONLY);
  }
  CL_CHECK(clEnqueueWriteBuffer(device_->queue(), mem_.get(), CL_FALSE, 0, total * sizeof(int32_t),
                                r.host.data(), 0, nullptr, r.written.out()),
           device_->info().label());
  v.meta = mem_.get();
  view_ = v;
  return v;
}

}  // namespace tessera::kv
