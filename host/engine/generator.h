// Text generation of a fixed list of requests through the request engine: every request is added
// at once and the engine batches them continuously (decode tokens and prefill chunks mixed).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "host/engine/engine.h"
#include "host/engine/sampler.h"

namespace tessera::engine {

struct GenerationStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  int decode_tokens = 0;  // tokens fed back through decode (the first sample comes from prefill)
  double prefill_seconds = 0;  // steps that carried prompt tokens (decode tokens may ride along)
  double decode_seconds = 0;   // steps of decode tokens only
  int kv_blocks_used = 0;      // peak
  int kv_blocks_total = 0;
  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0;
  }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 ? decode_tokens / decode_seconds : 0;
  }
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids (BOS included when the model wants one)
  int max_tokens = 16;          // tokens to generate
  SamplerConfig sampling;
  bool stop_at_eog = true;
};

// Called per generated token: (request index, token). Return false to stop that request.
using TokenCallback = std::function<bool(size_t request, int32_t token)>;
// `is_eog`: whether a token ends generation (tokenizer's end-of-generation set).
using EogPredicate = std::function<bool(int32_t)>;

// Runs the requests on `engine` (which must be idle; up to its max_sequences at once) and returns
// each one's generated tokens, an end-of-generation token left out. Throws RequestError naming
// the first request that failed, after every request has ended.
std::vector<std::vector<int32_t>> generate(Engine& engine,
                                           const std::vector<GenerationRequest>& requests,
                                           const TokenCallback& on_token,
                                           const EogPredicate& is_eog,
                                           GenerationStats* stats = nullptr);

}  // namespace tessera::engine
