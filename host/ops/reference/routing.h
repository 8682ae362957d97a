// Scalar reference of Mixture-of-Experts routing: gate probabilities, top-k selection, weight
// normalization, as llama.cpp's build_moe_ffn does it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessera::reference {

// How router logits become probabilities (llama.cpp's expert gating functions).
enum class GatingFunc {
  kSoftmax,  // softmax over all experts (llama/Mixtral, qwen2moe, qwen3moe)
  kSigmoid,  // independent sigmoid per expert (DeepSeek-V3 style routers)
};

struct RoutingConfig {
  int n_expert_used = 0;  // k
  GatingFunc gating = GatingFunc::kSoftmax;
  bool normalize_topk =
      false;                  // divide the k selected weights by their sum (clamped below at
                              // 6.1035e-5 as llama.cpp does): Mixtral, qwen3moe; qwen2moe does not
  float weight_scale = 1.0f;  // multiplies the final weights (expert_weights_scale; 0 means 1)
};

// The experts one token uses, best first.
struct ExpertChoice {
  std::vector<int32_t> ids;    // k expert indices, by descending probability (ties: lower index)
  std::vector<float> weights;  // their weights after normalization and scaling
};

// Routes one token from its router logits (one per expert). Throws std::invalid_argument when k is
// not in [1, n_expert].
ExpertChoice route_experts(std::span<const float> router_logits, const RoutingConfig& config);

}  // namespace tessera::reference
