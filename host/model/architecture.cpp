// The table of supported architectures. Semantics follow llama.cpp's src/models/<arch>.cpp and
// build_moe_ffn: llama routes with softmax + normalized top-k (Mixtral), qwen3moe likewise.
#include "host/model/architecture.h"

#include <array>

namespace tessera::model {
namespace {

constexpr std::array<ArchTraits, 3> kArchitectures{{
    {"llama", reference::RopeMode::kNormal, false, MoeKind::kOptional, true, ""},
    {"qwen3", reference::RopeMode::kNeox, true, MoeKind::kNone, false, ""},
    {"qwen3moe", reference::RopeMode::kNeox, true, MoeKind::kRequired, true,
     "expert_feed_forward_length"},
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
