// generate(): a fixed list of requests as engine requests, their tokens collected per request.
#include "host/engine/generator.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace tessera::engine {

std::vector<std::vector<int32_t>> generate(Engine& engine,
                                           const std::vector<GenerationRequest>& requests,
                                           const TokenCallback& on_token,
                                           const EogPredicate& is_eog, GenerationStats* stats) {
  if (!engine.idle()) throw std::logic_error("generate: the engine has requests of its own");
  std::vector<std::vector<int32_t>> out(requests.size());
  std::string first_error;
  const EngineCounters before = engine.counters();
  int generated = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& g = requests[i];
    Request r;
    r.prompt = g.prompt;
    r.max_tokens = g.max_tokens;
    r.sampling = g.sampling;
    if (g.stop_at_eog && is_eog) r.is_eog = is_eog;
    r.on_output = [&, i](const RequestOutput& o) {
      if (o.finish == FinishReason::kFailed && first_error.empty()) first_error = o.error;
      if (o.token < 0 || o.finish == FinishReason::kEog) return;
      out[i].push_back(o.token);
      ++generated;
      if (on_token && !on_token(i, o.token) && !o.finished()) engine.abort_request(o.id);
    };
    engine.add_request(std::move(r));
  }
  engine.run_until_idle();
  if (stats) {
    const EngineCounters& c = engine.counters();
    GenerationStats& st = *stats;
    for (const auto& g : requests) st.prompt_tokens += int(g.prompt.size());
    st.generated_tokens += generated;
    st.decode_tokens += int(c.decode_tokens - before.decode_tokens);
    st.prefill_seconds += c.prefill_seconds - before.prefill_seconds;
    st.decode_seconds += c.decode_seconds - before.decode_seconds;
    st.kv_blocks_used = std::max(st.kv_blocks_used, c.kv_blocks_peak);
    st.kv_blocks_total = engine.model().kv_cache().blocks().n_blocks();
  }
  if (!first_error.empty()) throw RequestError(first_error);
  return out;
}

}  // namespace tessera::engine
