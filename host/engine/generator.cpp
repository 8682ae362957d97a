// Generation loop: every request's prompt is prefilled in chunks of the step limit, then all live
// sequences decode together, one token each per step.
#include "host/engine/generator.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace tessera::engine {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
}  // namespace

std::vector<std::vector<int32_t>> generate(OpenClModel& model,
                                           const std::vector<GenerationRequest>& requests,
                                           const TokenCallback& on_token,
                                           const EogPredicate& is_eog, GenerationStats* stats) {
  GenerationStats local;
  GenerationStats& st = stats ? *stats : local;
  auto& kv = model.kv_cache();
  const int max_seqs = model.options().max_sequences;
  const int step_tokens = model.options().max_batch_tokens;
  std::vector<std::vector<int32_t>> out(requests.size());
  st.kv_blocks_total = kv.blocks().n_blocks();

  for (size_t first = 0; first < requests.size(); first += size_t(max_seqs)) {
    const size_t last = std::min(requests.size(), first + size_t(max_seqs));
    struct Live {
      size_t request;
      kv::SeqId seq;
      Sampler sampler;
      int32_t next = -1;
      bool done = false;
    };
    std::vector<Live> live;
    for (size_t r = first; r < last; ++r) {
      if (requests[r].prompt.empty())
        throw std::invalid_argument("request " + std::to_string(r) + ": empty prompt");
      live.push_back({r, kv.create_sequence(), Sampler(requests[r].sampling)});
    }
    try {
      // Prefill: each prompt in chunks; the last chunk's last token yields the first sample.
      auto t0 = Clock::now();
      for (auto& s : live) {
        const auto& prompt = requests[s.request].prompt;
        for (size_t pos = 0; pos < prompt.size(); pos += size_t(step_tokens)) {
          const int n = int(std::min(prompt.size() - pos, size_t(step_tokens)));
          const auto res = kv.reserve(s.seq, n);
          StepBatch b;
          b.seqs = {s.seq};
          b.tokens.assign(prompt.begin() + long(pos), prompt.begin() + long(pos) + n);
          b.token_seq.assign(size_t(n), 0);
          for (int i = 0; i < n; ++i) b.token_pos.push_back(res.first_pos + i);
          const bool last_chunk = pos + size_t(n) == prompt.size();
          if (last_chunk) b.logit_rows = {n - 1};
          const auto logits = model.forward(b);
          if (last_chunk) s.next = s.sampler.sample(logits);
        }
        st.prompt_tokens += int(prompt.size());
        st.kv_blocks_used = std::max(st.kv_blocks_used, kv.blocks().blocks_used());
      }
      st.prefill_seconds += since(t0);

      // Decode: all live sequences together.
      t0 = Clock::now();
      while (true) {
        StepBatch b;
        std::vector<Live*> active;
        for (auto& s : live) {
          if (s.done) continue;
          const auto& req = requests[s.request];
          const bool eog = req.stop_at_eog && is_eog && is_eog(s.next);
          if (!eog) {
            out[s.request].push_back(s.next);
            ++st.generated_tokens;
          }
          const bool keep = !eog && (!on_token || on_token(s.request, s.next));
          if (!keep || int(out[s.request].size()) >= req.max_tokens) {
            s.done = true;
            kv.free_sequence(s.seq);
            continue;
          }
          const auto res = kv.reserve(s.seq, 1);
          b.seqs.push_back(s.seq);
          b.tokens.push_back(s.next);
          b.token_seq.push_back(int32_t(b.seqs.size() - 1));
          b.token_pos.push_back(res.first_pos);
          b.logit_rows.push_back(int32_t(b.tokens.size() - 1));
          active.push_back(&s);
        }
        if (active.empty()) break;
        st.kv_blocks_used = std::max(st.kv_blocks_used, kv.blocks().blocks_used());
        const auto logits = model.forward(b);
        st.decode_tokens += int(active.size());
        const size_t nv = logits.size() / active.size();
        for (size_t i = 0; i < active.size(); ++i)
          active[i]->next =
              active[i]->sampler.sample(std::span<const float>(logits.data() + i * nv, nv));
      }
      st.decode_seconds += since(t0);
    } catch (...) {
      for (auto& s : live)
        if (!s.done && kv.blocks().contains(s.seq)) kv.free_sequence(s.seq);
      throw;
    }
  }
  return out;
}

}  // namespace tessera::engine
