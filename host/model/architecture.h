// The supported architectures as data: what distinguishes llama, qwen3, qwen3moe, qwen2moe,
// gpt-oss, granitehybrid and qwen3next for the forward pass.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "host/ops/reference/rope.h"

namespace tessera::model {

// Whether an architecture's FFN is a Mixture of Experts.
enum class MoeKind {
  kNone,      // dense FFN only (qwen3)
  kOptional,  // MoE when <arch>.expert_count > 0, dense otherwise (llama / Mixtral)
  kRequired,  // every layer is MoE (qwen3moe)
};

// Whether an architecture's MoE layers add a shared expert every token runs.
enum class SharedExpertKind {
  kNone,
  kGated,  // scaled by sigmoid(ffn_gate_inp_shexp . x) (qwen2moe)
  // Added as it is, and only when the file gives its width (shared_ff_key > 0): granitehybrid
  // (Granite 4.0-H's MoE variants; llama.cpp's n_ff_shexp > 0).
  kUngatedOptional,
};

// The recurrent mixer of an architecture's recurrent layers (llama.cpp's is_recr).
enum class RecurrentKind {
  kNone,    // every layer is attention; 0 KV heads is an error
  kMamba2,  // granitehybrid: Mamba2 (ssm_in, conv1d, selective scan, gated group norm, ssm_out);
            // layers with head_count_kv 0 in a per-layer array are recurrent
  // qwen3next: Gated DeltaNet (attn_qkv, attn_gate, ssm_ba, conv1d, delta rule, gated norm,
  // ssm_out); attention.recurrent_layers (one flag per layer) or, without it, every layer but each
  // full_attention_interval-th (default 4) is recurrent
  kGatedDeltaNet,
};

// The gated FFN activation of an architecture's experts.
enum class FfnActivation {
  kSwiglu,     // silu(gate) * up
  kSwigluOai,  // gpt-oss: clamped (reference::swiglu_oai, alpha 1.702, limit 7)
};

// Everything the layer walk needs to know about an architecture beyond its hyper-parameters. The
// block structure is shared: pre-norm attention (optional q/k/v biases; optional per-head q/k
// RMSNorm before RoPE), residual, pre-norm FFN (dense SwiGLU, MoE, or MoE plus a shared expert),
// residual, final norm, output projection.
struct ArchTraits {
  std::string_view name;          // general.architecture value and metadata key prefix
  reference::RopeMode rope_mode;  // llama.cpp's llama_model_rope_type for the architecture
  bool has_qk_norm;               // attn_q_norm / attn_k_norm tensors (Qwen3)
  MoeKind moe;
  bool normalize_topk;             // build_moe_ffn's norm_w
  std::string_view expert_ff_key;  // key suffix of the expert FFN width; empty: feed_forward_length
  SharedExpertKind shared_expert = SharedExpertKind::kNone;
  std::string_view shared_ff_key = {};  // key suffix of the shared expert's width (default n_ff)
  // gpt-oss: learned attention sinks (attn_sinks.weight), an output-projection bias
  // (attn_output.bias), router and expert biases (ffn_gate_inp.bias, ffn_{gate,up,down}_exps.bias),
  // the clamped SwiGLU, the FFN norm named post_attention_norm, and sliding-window layers by a
  // period when the file gives no per-layer pattern (llama.cpp's set_swa_pattern: layer i is
  // windowed when i % period < period - 1; 0: no default).
  bool attn_sinks = false;
  bool attn_out_bias = false;
  bool moe_biases = false;
  FfnActivation activation = FfnActivation::kSwiglu;
  std::string_view ffn_norm_name = "ffn_norm";
  uint32_t swa_period = 0;
  RecurrentKind recurrent = RecurrentKind::kNone;
  // Granite's multipliers (embedding_scale, residual_scale, attention.scale, logit_scale; each
  // optional) and its RoPE switch rope.scaling.finetuned (default true; Granite 4.0-H writes false:
  // its attention layers use no position encoding).
  bool granite_scales = false;
  // Qwen3-Next's gated attention: attn_q yields per head the query then an output gate (2 x
  // head_dim rows a head); the attention output is multiplied by sigmoid(gate) before attn_output.
  bool gated_attention = false;
};

// The traits of `name`, or nullptr when Tessera does not support it.
const ArchTraits* find_architecture(std::string_view name);
// Names of every supported architecture, for error messages and --help.
std::vector<std::string> supported_architectures();

}  // namespace tessera::model
