// Scalar MoE routing: probabilities, stable top-k, optional normalization and scale.
#include "host/ops/reference/routing.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include "host/ops/reference/activation.h"

namespace tessera::reference {

ExpertChoice route_experts(std::span<const float> router_logits, const RoutingConfig& config) {
  const int n_expert = int(router_logits.size());
  const int k = config.n_expert_used;
  if (k < 1 || k > n_expert) {
    throw std::invalid_argument("route_experts: n_expert_used " + std::to_string(k) +
                                " is not in [1, " + std::to_string(n_expert) + "]");
  }
  std::vector<float> probs(router_logits.begin(), router_logits.end());
  if (config.gating == GatingFunc::kSoftmax) {
    softmax(probs);
  } else {
    for (float& p : probs) p = sigmoid(p);
  }
  std::vector<int32_t> order(static_cast<size_t>(n_expert));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });

  ExpertChoice choice;
  choice.ids.assign(order.begin(), order.begin() + k);
  for (int32_t id : choice.ids) choice.weights.push_back(probs[size_t(id)]);
  if (config.normalize_topk) {
    double sum = 0.0;
    for (float w : choice.weights) sum += w;
    const float denom = std::max(float(sum), 6.103515625e-5f);
    for (float& w : choice.weights) w /= denom;
  }
  if (config.weight_scale != 0.0f && config.weight_scale != 1.0f) {
    for (float& w : choice.weights) w *= config.weight_scale;
  }
  return choice;
}

}  // namespace tessera::reference
