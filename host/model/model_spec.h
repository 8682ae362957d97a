// A model's description as data: hyper-parameters from GGUF metadata plus, per layer, the tensors
// it uses, all shape-checked. The reference forward and the OpenCL engine walk the same ModelSpec.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "host/common/error.h"
#include "host/gguf/gguf.h"
#include "host/model/architecture.h"

namespace tessera::model {

// Thrown for a model Tessera cannot run: unknown architecture, missing/inconsistent metadata, a
// missing tensor or one of the wrong shape or type. The message names the file and the field.
struct ModelError : TesseraError {
  using TesseraError::TesseraError;
};

// Hyper-parameters, from `<arch>.*` metadata (defaults as llama.cpp's loader applies them).
struct HParams {
  uint32_t n_layer = 0;    // block_count
  uint32_t n_embd = 0;     // embedding_length
  uint32_t n_ff = 0;       // feed_forward_length: the largest over layers (LayerSpec::n_ff per
                           // layer); llama MoE experts' width too
  uint32_t n_head = 0;     // attention.head_count
  uint32_t n_head_kv = 0;  // attention.head_count_kv: the largest over layers (LayerSpec::n_head_kv
                           // per layer; default n_head)
  uint32_t head_dim = 0;   // attention.key_length (default n_embd / n_head); value_length equal
  uint32_t n_rot = 0;      // rope.dimension_count (default head_dim)
  uint32_t n_ctx_train = 0;           // context_length
  uint32_t n_vocab = 0;               // rows of token_embd
  float rope_freq_base = 10000.0f;    // rope.freq_base
  float rope_freq_scale = 1.0f;       // 1 / rope.scaling.factor (linear or YaRN; LongRoPE refused)
  reference::RopeYarn rope_yarn;      // YaRN's blend (rope.scaling.type yarn) and magnitude
                                      // (rope.scaling.attn_factor, YaRN's 1 + 0.1 ln factor)
  float rms_eps = 0.0f;               // attention.layer_norm_rms_epsilon
  uint32_t n_expert = 0;              // expert_count (0: dense)
  uint32_t n_expert_used = 0;         // expert_used_count
  uint32_t n_ff_exp = 0;              // width of one routed expert's FFN
  uint32_t n_ff_shexp = 0;            // width of the shared expert's FFN (0: none)
  float expert_weights_scale = 0.0f;  // expert_weights_scale (0: none)
  // Granite's multipliers (ArchTraits::granite_scales; 1 / 0 when absent or 0 in the file):
  float embedding_scale = 1.0f;  // embedding_scale: x = scale * token_embd[token]
  float residual_scale = 1.0f;   // residual_scale: x += scale * block(x), for mixers and FFNs
  float attention_scale = 0.0f;  // attention.scale: the score scale (0: 1 / sqrt(head_dim))
  float logit_scale = 1.0f;      // logit_scale: logits are divided by it
  // Recurrent mixers (ssm.*; 0 when the model has no recurrent layer); the conv spans d_conv
  // tokens. Mamba2: d_inner = n_head * head_dim channels, heads in n_group groups of B and C, each
  // d_state wide. Gated DeltaNet: n_head value heads and n_group key heads, both d_state wide
  // (d_inner = n_head * d_state), q and k of n_group * d_state, v of d_inner.
  uint32_t ssm_d_conv = 0;   // ssm.conv_kernel
  uint32_t ssm_d_inner = 0;  // ssm.inner_size
  uint32_t ssm_d_state = 0;  // ssm.state_size
  uint32_t ssm_n_head = 0;   // ssm.time_step_rank (llama.cpp's name for the (value) head count)
  uint32_t ssm_n_group = 0;  // ssm.group_count (Gated DeltaNet: the key heads)

  // The attention output's width: attn_q's rows (twice that for gated attention).
  uint32_t q_dim() const { return n_head * head_dim; }
  uint32_t kv_dim() const { return n_head_kv * head_dim; }  // largest rows of attn_k / attn_v
  // The recurrent mixers' sizes: conv channels (Mamba2 x, B, C; Gated DeltaNet q, k, v), Mamba2's
  // in-projection rows (z, x, B, C, dt), state floats per sequence (conv state
  // [channels][d_conv - 1], then the SSM / delta-rule state [d_state][d_inner]).
  uint32_t ssm_conv_channels() const { return ssm_d_inner + 2 * ssm_n_group * ssm_d_state; }
  uint32_t ssm_in_rows() const { return ssm_d_inner + ssm_conv_channels() + ssm_n_head; }
  uint64_t ssm_conv_state_floats() const {
    return uint64_t(ssm_conv_channels()) * (ssm_d_conv ? ssm_d_conv - 1 : 0);
  }
  uint64_t ssm_state_floats() const {
    return ssm_conv_state_floats() + uint64_t(ssm_d_state) * ssm_d_inner;
  }
};

// What mixes a layer's tokens; each kind has its tensors in LayerSpec and a class in
// host/engine/layers.
enum class MixerKind : uint8_t {
  kAttention,      // causal self-attention over the layer's KV (a window of 0 = the whole sequence)
  kMamba2,         // Mamba2's selective state-space mixer over a fixed per-sequence state
  kGatedDeltaNet,  // Gated DeltaNet's delta-rule linear attention over a fixed per-sequence state
};

// The layer's feed-forward block.
enum class FfnKind : uint8_t {
  kDense,      // SwiGLU FFN (ffn_gate / ffn_up / ffn_down)
  kMoe,        // routed experts (ffn_gate_inp + ffn_*_exps)
  kMoeShared,  // routed experts plus a shared expert every token runs (ffn_*_shexp)
};

std::string_view mixer_kind_name(MixerKind kind);
std::string_view ffn_kind_name(FfnKind kind);

// One block: its kinds, its own shape (GGUF allows per-layer arrays for head_count_kv and
// feed_forward_length) and its tensors. Tensor pointers point into the GgufFile's tensor table
// (never null where the layer's kinds need them, null where the architecture/layer does not have
// them).
struct LayerSpec {
  MixerKind mixer = MixerKind::kAttention;
  FfnKind ffn = FfnKind::kDense;
  uint32_t n_head_kv = 0;  // this layer's KV heads (attention; 0 for a recurrent layer)
  uint32_t window = 0;     // attention window in tokens; 0: the whole sequence (model_spec.cpp
                           // says which GGUF keys set it)
  uint32_t n_ff = 0;       // this layer's dense FFN width (dense FFN)

  uint32_t kv_dim(const HParams& hp) const { return n_head_kv * hp.head_dim; }

  const gguf::TensorInfo* attn_norm = nullptr;  // [n_embd]
  const gguf::TensorInfo* wq = nullptr;         // [n_embd, q_dim] (gated: [n_embd, 2 q_dim],
                                                // per head the query then its gate)
  const gguf::TensorInfo* wk = nullptr;         // [n_embd, kv_dim]
  const gguf::TensorInfo* wv = nullptr;         // [n_embd, kv_dim]
  const gguf::TensorInfo* wo = nullptr;         // [q_dim, n_embd]
  const gguf::TensorInfo* bq = nullptr;         // [q_dim] attn_q.bias (optional)
  const gguf::TensorInfo* bk = nullptr;         // [kv_dim] attn_k.bias (with bq)
  const gguf::TensorInfo* bv = nullptr;         // [kv_dim] attn_v.bias (with bq)
  const gguf::TensorInfo* bo = nullptr;         // [n_embd] attn_output.bias (gpt-oss)
  const gguf::TensorInfo* sinks = nullptr;      // [n_head] attn_sinks.weight (gpt-oss)
  const gguf::TensorInfo* q_norm = nullptr;     // [head_dim] (qwen3*)
  const gguf::TensorInfo* k_norm = nullptr;     // [head_dim] (qwen3*)
  const gguf::TensorInfo* ffn_norm = nullptr;   // [n_embd] (gpt-oss: post_attention_norm)
  // Mamba2 (attn_norm is its input norm too)
  const gguf::TensorInfo* ssm_in = nullptr;        // [n_embd, ssm_in_rows]: z | x | B | C | dt
  const gguf::TensorInfo* ssm_conv1d = nullptr;    // [d_conv, conv channels]
  const gguf::TensorInfo* ssm_conv1d_b = nullptr;  // [conv channels] (optional)
  const gguf::TensorInfo* ssm_dt_b = nullptr;      // ssm_dt.bias [n_head]
  // (Gated DeltaNet: ssm_a [n_head], ssm_norm [d_state] shared by the heads)
  const gguf::TensorInfo* ssm_a = nullptr;     // ssm_a [1, n_head]: -exp(A_log)
  const gguf::TensorInfo* ssm_d = nullptr;     // ssm_d [1, n_head]
  const gguf::TensorInfo* ssm_norm = nullptr;  // [d_inner / n_group, n_group]
  const gguf::TensorInfo* ssm_out = nullptr;   // [d_inner, n_embd]
  // Gated DeltaNet (with attn_norm, ssm_conv1d over q | k | v, ssm_dt_b, ssm_a, ssm_norm, ssm_out)
  const gguf::TensorInfo* ssm_qkv = nullptr;   // attn_qkv [n_embd, conv channels]: q | k | v
  const gguf::TensorInfo* ssm_gate = nullptr;  // attn_gate [n_embd, d_inner]: the output gate z
  // (or, from llama.cpp's first converter, ssm_in [n_embd, conv channels + d_inner] with, per key
  // head, its q, k, its value heads' v and their z; ssm_qkv and ssm_gate are then null)
  const gguf::TensorInfo* ssm_ba = nullptr;  // ssm_ba [n_embd, 2 n_head]: per key head its
                                             // value heads' betas, then their alphas
  // dense FFN
  const gguf::TensorInfo* ffn_gate = nullptr;  // [n_embd, n_ff]
  const gguf::TensorInfo* ffn_up = nullptr;    // [n_embd, n_ff]
  const gguf::TensorInfo* ffn_down = nullptr;  // [n_ff, n_embd]
  // MoE FFN
  const gguf::TensorInfo* router = nullptr;     // ffn_gate_inp [n_embd, n_expert]
  const gguf::TensorInfo* gate_exps = nullptr;  // [n_embd, n_ff_exp, n_expert]
  const gguf::TensorInfo* up_exps = nullptr;    // [n_embd, n_ff_exp, n_expert]
  const gguf::TensorInfo* down_exps = nullptr;  // [n_ff_exp, n_embd, n_expert]
  // MoE biases (gpt-oss; all or none)
  const gguf::TensorInfo* router_b = nullptr;     // ffn_gate_inp.bias [n_expert]
  const gguf::TensorInfo* gate_exps_b = nullptr;  // [n_ff_exp, n_expert]
  const gguf::TensorInfo* up_exps_b = nullptr;    // [n_ff_exp, n_expert]
  const gguf::TensorInfo* down_exps_b = nullptr;  // [n_embd, n_expert]
  // shared expert (kMoeShared)
  const gguf::TensorInfo* gate_inp_shexp = nullptr;  // [n_embd] (gated kinds)
  const gguf::TensorInfo* gate_shexp = nullptr;      // [n_embd, n_ff_shexp]
  const gguf::TensorInfo* up_shexp = nullptr;        // [n_embd, n_ff_shexp]
  const gguf::TensorInfo* down_shexp = nullptr;      // [n_ff_shexp, n_embd]

  bool is_moe() const { return ffn == FfnKind::kMoe || ffn == FfnKind::kMoeShared; }
};

// A loaded model's description. Non-owning: it points into `file`, which must outlive it.
struct ModelSpec {
  const ArchTraits* arch = nullptr;
  HParams hp;
  const gguf::TensorInfo* token_embd = nullptr;   // [n_embd, n_vocab]
  const gguf::TensorInfo* output_norm = nullptr;  // [n_embd]
  const gguf::TensorInfo* output = nullptr;       // [n_embd, n_vocab]; == token_embd when tied
  bool output_tied = false;                       // output.weight absent: reuse token_embd
  const gguf::TensorInfo* rope_freqs = nullptr;   // [n_rot/2] Llama 3 RoPE divisors, or null
  std::vector<LayerSpec> layers;
  std::string source;  // the file's path, for messages

  // Reads and checks everything: the architecture is supported, required metadata is present and
  // consistent, every tensor exists with the expected shape and a type the reference can read.
  // Throws ModelError (or gguf::GgufError for a malformed file).
  static ModelSpec from_gguf(const gguf::GgufFile& file);
};

}  // namespace tessera::model
