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

  uint32_t q_dim() const { return n_head * head_dim; }      // rows of attn_q
  uint32_t kv_dim() const { return n_head_kv * head_dim; }  // largest rows of attn_k / attn_v
};

// What mixes a layer's tokens. Attention is the only kind today; recurrent kinds (Mamba2, Gated
// DeltaNet) add a value here, their tensors to LayerSpec and a class in host/engine/layers.
enum class MixerKind : uint8_t {
  kAttention,  // causal self-attention over the layer's KV (a window of 0 = the whole sequence)
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
  uint32_t n_head_kv = 0;  // this layer's KV heads (attention)
  uint32_t window = 0;     // attention window in tokens; 0: the whole sequence (model_spec.cpp
                           // says which GGUF keys set it)
  uint32_t n_ff = 0;       // this layer's dense FFN width (dense FFN)

  uint32_t kv_dim(const HParams& hp) const { return n_head_kv * hp.head_dim; }

  const gguf::TensorInfo* attn_norm = nullptr;  // [n_embd]
  const gguf::TensorInfo* wq = nullptr;         // [n_embd, q_dim]
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
