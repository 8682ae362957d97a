// The scalar reference forward pass: walks a ModelSpec's layers with host/ops/reference ops. It is
// the oracle the OpenCL engine is compared against and what `tessera run --reference` executes.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "host/model/model_spec.h"
#include "host/ops/reference/ffn.h"
#include "host/ops/reference/matmul.h"

namespace tessera::model {

// A simple KV cache for one sequence: per layer, the keys and values of every position seen so far,
// appended in order ([n_past][n_head_kv][head_dim] floats each). forward() is its only writer.
struct KvState {
  explicit KvState(uint32_t n_layer = 0) : k(n_layer), v(n_layer) {}
  std::vector<std::vector<float>> k, v;
  int64_t n_past = 0;  // positions stored
  void clear() {
    for (auto& x : k) x.clear();
    for (auto& x : v) x.clear();
    n_past = 0;
  }
};

// Host memory the reference path needs to run `spec` (read from `file`) over `n_tokens` tokens of
// one sequence: the mapped weights it reads, its KV cache and the activations of a step that long.
// Callers compare it with the machine's memory before starting, as the OpenCL path's planner does.
uint64_t reference_host_bytes(const gguf::GgufFile& file, const ModelSpec& spec, uint64_t n_tokens);

// Runs a model on the host, single-threaded. Holds views into the GgufFile behind the spec (which
// must outlive it) and the norm weights dequantized to float. const methods are thread-safe.
class ReferenceModel {
 public:
  explicit ReferenceModel(const ModelSpec& spec);

  const ModelSpec& spec() const { return spec_; }
  KvState new_kv_state() const { return KvState(spec_.hp.n_layer); }

  // Runs tokens (with their positions, one each; they continue the sequence in `kv`, so normally
  // positions[i] == kv.n_past + i) through every layer, appends their K/V to kv and returns logits:
  // [n_vocab] for the last token, or [n_tokens][n_vocab] when all_logits. Throws
  // std::invalid_argument on an empty batch, mismatched sizes, a token id outside the vocabulary or
  // a KV state of another model.
  std::vector<float> forward(std::span<const int32_t> tokens, std::span<const int32_t> positions,
                             KvState& kv, bool all_logits = false) const;

 private:
  struct Layer {
    std::vector<float> attn_norm, ffn_norm, q_norm, k_norm;  // norms as float (q/k empty if absent)
    reference::WeightMatrix wq, wk, wv, wo;
    reference::WeightMatrix ffn_gate, ffn_up, ffn_down;  // dense
    std::optional<reference::MoeWeights> moe;            // MoE layers
  };

  ModelSpec spec_;
  reference::WeightMatrix token_embd_, output_;
  std::vector<float> output_norm_;
  std::vector<float> rope_freqs_;  // empty when the model has no rope_freqs.weight
  std::vector<Layer> layers_;
  reference::RoutingConfig routing_;
};

// Views of spec tensors as reference weights (exposed for tests and the device engine's checks).
reference::WeightMatrix as_matrix(const gguf::TensorInfo& t);
reference::ExpertMatrices as_experts(const gguf::TensorInfo& t);
std::vector<float> to_floats(const gguf::TensorInfo& t);  // whole tensor dequantized

}  // namespace tessera::model
