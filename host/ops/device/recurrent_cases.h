// Portability-matrix helpers shared by the recurrent ops' cases (ssm.cpp, deltanet.cpp): a batch
// of sequences of different lengths on permuted state slots, run as one launch (every sequence's
// whole run: prefill) or split (each sequence's first half as a prefill launch, then one launch
// per remaining token over the sequences that have one: decode), so a case checks that prefill
// then decode equals the reference over the whole run.
#pragma once

#include <cstdint>
#include <vector>

#include "host/ops/device/matrix.h"

namespace tessera::ops::recurrent_cases {

struct SeqPlan {
  std::vector<uint32_t> lens;  // tokens per sequence; their rows are consecutive, in order
  std::vector<int32_t> slots;  // state slot per sequence
  uint32_t n_slots = 0;        // slots in the state buffer (unused ones must stay untouched)
  uint32_t first_row(size_t seq) const {
    uint32_t r = 0;
    for (size_t i = 0; i < seq; ++i) r += lens[i];
    return r;
  }
  uint32_t rows() const { return first_row(lens.size()); }
};

// The launches' `seqs` buffers: int32 triples (first row, token count, slot) per launch.
inline std::vector<std::vector<int32_t>> launches(const SeqPlan& p, bool split) {
  std::vector<std::vector<int32_t>> out;
  if (!split) {
    out.emplace_back();
    for (size_t s = 0; s < p.lens.size(); ++s)
      out.back().insert(out.back().end(),
                        {int32_t(p.first_row(s)), int32_t(p.lens[s]), p.slots[s]});
    return out;
  }
  std::vector<uint32_t> done(p.lens.size());
  out.emplace_back();
  for (size_t s = 0; s < p.lens.size(); ++s) {
    done[s] = (p.lens[s] + 1) / 2;
    out.back().insert(out.back().end(), {int32_t(p.first_row(s)), int32_t(done[s]), p.slots[s]});
  }
  for (bool more = true; more;) {
    more = false;
    std::vector<int32_t> l;
    for (size_t s = 0; s < p.lens.size(); ++s) {
      if (done[s] >= p.lens[s]) continue;
      l.insert(l.end(), {int32_t(p.first_row(s) + done[s]), 1, p.slots[s]});
      ++done[s];
      more = true;
    }
    if (more) out.push_back(std::move(l));
  }
  return out;
}

// Token rows of one launch's triples.
inline uint32_t tokens_of(const std::vector<int32_t>& triples) {
  uint32_t n = 0;
  for (size_t i = 1; i < triples.size(); i += 3) n += uint32_t(triples[i]);
  return n;
}

// Runs `launch(seqs_buffer, n_seqs, n_tokens)` once per launch of the plan (launches above).
template <typename F>
void run_plan(const Device& device, const SeqPlan& p, bool split, F&& launch) {
  for (const std::vector<int32_t>& triples : launches(p, split)) {
    GuardedBuffer seqs(device, triples);
    launch(seqs.mem(), uint32_t(triples.size() / 3), tokens_of(triples));
  }
}

// Plans the cases use: decode only (one token per sequence), mixed, one long prefill.
inline SeqPlan decode_plan() {
  return {{1, 1, 1}, {2, 0, 3}, 4};
}
inline SeqPlan mixed_plan() {
  return {{5, 1, 3, 8}, {3, 1, 4, 0}, 5};
}
inline SeqPlan long_plan(uint32_t n) {
  return {{n}, {0}, 1};
}

}  // namespace tessera::ops::recurrent_cases
