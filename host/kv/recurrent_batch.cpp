// Packing one batch's (first row, token count, state slot) triples into a device buffer.
#include "host/kv/recurrent_batch.h"

#include <algorithm>
#include <string>

namespace tessera::kv {

RecurrentBatchBuffers::RecurrentBatchBuffers(const Device& device, int32_t max_seqs)
    : device_(&device) {
  if (max_seqs > 0) {
    capacity_ = 3 * size_t(max_seqs);
    mem_ = device_->alloc(capacity_ * sizeof(int32_t), CL_MEM_READ_ONLY);
  }
}

RecurrentBatchView RecurrentBatchBuffers::upload(const RecurrentStatePool& pool,
                                                 std::span<const SeqId> seqs,
                                                 std::span<const int32_t> token_seq) {
  auto bad = [](const std::string& what) { throw KvCacheUsageError("recurrent batch: " + what); };
  const size_t n_seqs = seqs.size();
  triples_.assign(3 * n_seqs, 0);
  for (size_t i = 0; i < n_seqs; ++i) {
    if (!pool.contains(seqs[i]))
      bad("sequence " + std::to_string(seqs[i]) + " holds no recurrent state slot");
    triples_[3 * i] = -1;
    triples_[3 * i + 2] = pool.slot(seqs[i]);
  }
  for (size_t t = 0; t < token_seq.size(); ++t) {
    const int32_t row = token_seq[t];
    if (row < 0 || size_t(row) >= n_seqs)
      bad("token " + std::to_string(t) + ": sequence row " + std::to_string(row) + " outside [0, " +
          std::to_string(n_seqs) + ")");
    int32_t* tr = &triples_[3 * size_t(row)];
    if (tr[0] < 0) {
      tr[0] = int32_t(t);
    } else if (size_t(tr[0] + tr[1]) != t) {
      bad("token " + std::to_string(t) + " of sequence " + std::to_string(seqs[size_t(row)]) +
          " does not follow the sequence's previous token (row " +
          std::to_string(tr[0] + tr[1] - 1) + "): a sequence's tokens must be consecutive");
    }
    ++tr[1];
  }
  for (size_t i = 0; i < n_seqs; ++i) triples_[3 * i] = std::max(triples_[3 * i], 0);

  HostCopy& r = ring_[size_t(next_)];
  next_ = 1 - next_;
  if (r.written) {  // the host copy of two uploads ago must have reached the device
    CL_CHECK(clWaitForEvents(1, r.written.ptr()), device_->info().label());
    r.written.reset();
  }
  r.host = triples_;
  const size_t total = std::max<size_t>(1, r.host.size());
  r.host.resize(total);
  if (total > capacity_) {
    capacity_ = std::max(total, capacity_ * 2);
    mem_ = device_->alloc(capacity_ * sizeof(int32_t), CL_MEM_READ_ONLY);
  }
  CL_CHECK(clEnqueueWriteBuffer(device_->queue(), mem_.get(), CL_FALSE, 0, total * sizeof(int32_t),
                                r.host.data(), 0, nullptr, r.written.out()),
           device_->info().label());
  view_ = {mem_.get(), 0, int32_t(n_seqs)};
  return view_;
}

}  // namespace tessera::kv
