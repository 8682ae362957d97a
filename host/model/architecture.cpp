// The table of supported architectures. Semantics follow llama.cpp's src/models/<arch>.cpp and
// build_moe_ffn: llama routes with softmax + normalized top-k (Mixtral), qwen3moe likewise;
// qwen2moe with softmax, un-normalized, plus its gated shared expert.
#include "host/model/architecture.h"

#include <array>

namespace tessera::model {
namespace {

constexpr std::array<ArchTraits, 4> kArchitectures{{
    {"llama", reference::RopeMode::kNormal, false, MoeKind::kOptional, true, ""},
    {"qwen3", reference::RopeMode::kNeox, true, MoeKind::kNone, false, ""},
    {"qwen3moe", reference::RopeMode::kNeox, true, MoeKind::kRequired, true,
     "expert_feed_forward_length"},
    // Qwen1.5-MoE / Qwen2-MoE: softmax routing without top-k normalization, a shared expert
    // scaled by a sigmoid gate (src/models/qwen2moe.cpp).
    {"qwen2moe", reference::RopeMode::kNeox, false, MoeKind::kRequired, false,
     "expert_feed_forward_length", SharedExpertKind::kGated, "expert_shared_feed_forward_length"},
}};

}  // namespace

const ArchTraits* find_architecture(std::string_view name) {
  for (const auto& a : kArchitectures)
    if (a.name == name) return &a;
  return nullptr;
}

std::vector<std::string> supported_architectures() {
  std::vector<std::string> names;
  names.reserve(kArchitectures.size());
  for (const auto& a : kArchitectures) names.emplace_back(a.name);
  return names;
}

}  // namespace tessera::model
