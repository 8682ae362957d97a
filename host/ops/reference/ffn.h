// Scalar reference of the feed-forward blocks: dense SwiGLU FFN, MoE FFN with routed and shared
// experts.
#pragma once

#include <optional>
#include <span>
#include <vector>

#include "host/ops/reference/matmul.h"
#include "host/ops/reference/routing.h"

namespace tessera::reference {

// Dense gated FFN for a batch: x [n_tokens][gate.cols] ->
// out [n_tokens][down.rows] = down( silu(gate x) * (up x) ).
void ffn_swiglu(std::span<const float> x, const WeightMatrix& gate, const WeightMatrix& up,
                const WeightMatrix& down, std::span<float> out);

// A qwen2moe-style shared expert: a dense SwiGLU FFN every token runs, its output optionally scaled
// by sigmoid(gate_inp . x) (gate_inp is one row of n_embd: ffn_gate_inp_shexp).
struct SharedExpert {
  WeightMatrix gate, up, down;
  std::optional<WeightMatrix> gate_inp;
};

// One MoE layer's weights. router: [n_expert rows][n_embd] (ffn_gate_inp); experts stacked as
// ffn_{gate,up,down}_exps.
struct MoeWeights {
  WeightMatrix router;
  ExpertMatrices gate, up, down;
  std::optional<SharedExpert> shared;
  // gpt-oss: biases (empty: none) on the router logits [n_expert] and on each expert's gate and up
  // [n_expert][n_ff_exp] and down [n_expert][n_embd] outputs, and the clamped SwiGLU (swiglu_oai,
  // alpha 1.702, limit 7) instead of silu(gate) * up.
  std::vector<float> router_b, gate_b, up_b, down_b;
  bool swiglu_oai = false;
};

// MoE FFN for a batch, as llama.cpp's build_moe_ffn (with gpt-oss's biases and activation when
// the weights have them): per token, router logits ->
// route_experts -> out = sum_k weight_k * expert_k(x) (+ the shared expert's output).
// x [n_tokens][n_embd], out [n_tokens][n_embd]. When choices is not null it receives each token's
// routing (for tests and for checking a device router against this one).
void moe_ffn(std::span<const float> x, const MoeWeights& w, const RoutingConfig& routing,
             std::span<float> out, std::vector<ExpertChoice>* choices = nullptr);

}  // namespace tessera::reference
