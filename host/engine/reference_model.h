// The scalar reference forward pass: walks the same layer list as the OpenCL engine (host/engine/
// layers), each layer's reference forward built from host/ops/reference ops. It is the oracle the
// OpenCL engine is compared against and what `tessera run --reference` executes. It lives in the
// engine because the layer classes hold both forwards of each kind.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "host/engine/layers/layer.h"
#include "host/model/model_spec.h"
#include "host/ops/reference/matmul.h"

namespace tessera::engine {

// A sequence's memory on the reference path: per layer what its mixer keeps (attention: the keys
// and values of every position seen so far, appended in order; recurrent mixers: their fixed
// state). forward() is its only writer; a copy continues the sequence on its own (a fork).
struct KvState {
  explicit KvState(uint32_t n_layer = 0) : layers(n_layer) {}
  std::vector<ReferenceLayerMemory> layers;
  int64_t n_past = 0;  // positions stored
  void clear() {
    for (auto& l : layers) l = {};
    n_past = 0;
  }
};

// Host memory the reference path needs to run `spec` (read from `file`) over `n_tokens` tokens of
// one sequence: the mapped weights it reads, its KV cache and the activations of a step that long.
// Callers compare it with the machine's memory before starting, as the OpenCL path's planner does.
uint64_t reference_host_bytes(const gguf::GgufFile& file, const model::ModelSpec& spec,
                              uint64_t n_tokens);

// Runs a model on the host, single-threaded. Holds views into the GgufFile behind the spec (which
// must outlive it) and the norm weights dequantized to float. const methods are thread-safe.
class ReferenceModel {
 public:
  explicit ReferenceModel(const model::ModelSpec& spec);
  ReferenceModel(const ReferenceModel&) = delete;  // the layers point at spec_
  ReferenceModel& operator=(const ReferenceModel&) = delete;

  const model::ModelSpec& spec() const { return spec_; }
  KvState new_kv_state() const { return KvState(spec_.hp.n_layer); }

  // Runs tokens (with their positions, one each; they continue the sequence in `kv`, so normally
  // positions[i] == kv.n_past + i) through every layer, appends their K/V to kv and returns logits:
  // [n_vocab] for the last token, or [n_tokens][n_vocab] when all_logits. Throws
  // std::invalid_argument on an empty batch, mismatched sizes, a token id outside the vocabulary or
  // a KV state of another model.
  std::vector<float> forward(std::span<const int32_t> tokens, std::span<const int32_t> positions,
                             KvState& kv, bool all_logits = false) const;

 private:
  model::ModelSpec spec_;
  reference::WeightMatrix token_embd_, output_;
  std::vector<float> output_norm_;
  std::vector<Layer> layers_;
};

}  // namespace tessera::engine
