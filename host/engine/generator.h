// Text generation over the OpenCL model: chunked prefill, then decode steps, for one or several
// sequences batched together (each step carries every active sequence's next token).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "host/engine/opencl_model.h"
#include "host/engine/sampler.h"

namespace tessera::engine {

struct GenerationStats {
  int prompt_tokens = 0;
  int generated_tokens = 0;
  int decode_tokens = 0;  // tokens run through decode steps (the first sample comes from prefill)
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int kv_blocks_used = 0;  // peak
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

// Runs the requests together (up to the model's max_sequences at once) and returns each one's
// generated tokens. Sequences are freed from the KV cache when they finish.
std::vector<std::vector<int32_t>> generate(OpenClModel& model,
                                           const std::vector<GenerationRequest>& requests,
                                           const TokenCallback& on_token,
                                           const EogPredicate& is_eog,
                                           GenerationStats* stats = nullptr);

}  // namespace tessera::engine
