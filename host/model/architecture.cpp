// The table of supported architectures. Semantics follow llama.cpp's src/models/<arch>.cpp and
// build_moe_ffn: llama routes with softmax + normalized top-k (Mixtral), qwen3moe likewise;
// qwen2moe with softmax, un-normalized, plus its gated shared expert; gpt-oss (openai-moe.cpp);
// granitehybrid (granite-hybrid.cpp, mamba-base.cpp's build_mamba2_layer); qwen3next
// (qwen3next.cpp, delta-net-base.cpp).
#include "host/model/architecture.h"

#include <array>

namespace tessera::model {
namespace {

constexpr std::array<ArchTraits, 7> kArchitectures{{
    {"llama", reference::RopeMode::kNormal, false, MoeKind::kOptional, true, ""},
    {"qwen3", reference::RopeMode::kNeox, true, MoeKind::kNone, false, ""},
    {"qwen3moe", reference::RopeMode::kNeox, true, MoeKind::kRequired, true,
     "expert_feed_forward_length"},
    // Qwen1.5-MoE / Qwen2-MoE: softmax routing without top-k normalization, a shared expert
    // scaled by a sigmoid gate (src/models/qwen2moe.cpp).
    {"qwen2moe", reference::RopeMode::kNeox, false, MoeKind::kRequired, false,
     "expert_feed_forward_length", SharedExpertKind::kGated, "expert_shared_feed_forward_length"},
    // gpt-oss (src/models/openai-moe.cpp): NeoX RoPE, attention sinks and an output bias, biased
    // router and experts, softmax over the chosen top-k logits (= softmax then normalized top-k),
    // the clamped SwiGLU, alternate windowed / full layers (even layers windowed by default).
    {.name = "gpt-oss",
     .rope_mode = reference::RopeMode::kNeox,
     .has_qk_norm = false,
     .moe = MoeKind::kRequired,
     .normalize_topk = true,
     .expert_ff_key = "expert_feed_forward_length",
     .attn_sinks = true,
     .attn_out_bias = true,
     .moe_biases = true,
     .activation = FfnActivation::kSwigluOai,
     .ffn_norm_name = "post_attention_norm",
     .swa_period = 2},
    // Granite 4.0-H (src/models/granite-hybrid.cpp): Mamba2 layers where head_count_kv is 0,
    // attention elsewhere (normal RoPE unless rope.scaling.finetuned is false), optional MoE whose
    // experts take feed_forward_length as their width (softmax, normalized top-k) with an ungated
    // shared expert when expert_shared_feed_forward_length > 0, Granite's multipliers.
    {.name = "granitehybrid",
     .rope_mode = reference::RopeMode::kNormal,
     .has_qk_norm = false,
     .moe = MoeKind::kOptional,
     .normalize_topk = true,
     .expert_ff_key = "",
     .shared_expert = SharedExpertKind::kUngatedOptional,
     .shared_ff_key = "expert_shared_feed_forward_length",
     .recurrent = RecurrentKind::kMamba2,
     .granite_scales = true},
    // Qwen3-Next (src/models/qwen3next.cpp): Gated DeltaNet layers and, every
    // full_attention_interval-th layer, gated attention (NeoX RoPE over rope.dimension_count
    // dims, q/k RMSNorm, a sigmoid output gate from attn_q); every layer MoE (softmax, normalized
    // top-k) plus a shared expert scaled by sigmoid(ffn_gate_inp_shexp . x); the FFN norm is
    // post_attention_norm.
    {.name = "qwen3next",
     .rope_mode = reference::RopeMode::kNeox,
     .has_qk_norm = true,
     .moe = MoeKind::kRequired,
     .normalize_topk = true,
     .expert_ff_key = "expert_feed_forward_length",
     .shared_expert = SharedExpertKind::kGated,
     .shared_ff_key = "expert_shared_feed_forward_length",
     .ffn_norm_name = "post_attention_norm",
     .recurrent = RecurrentKind::kGatedDeltaNet,
     .gated_attention = true},
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
