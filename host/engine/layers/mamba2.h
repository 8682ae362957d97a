// Mamba2 as a layer's mixer (Granite 4.0-H's recurrent layers, llama.cpp's build_mamba2_layer):
// RMSNorm, in-projection into z | xBC | dt, the short causal conv1d + SiLU over xBC with its
// rolling state, the selective scan over x with B, C and dt (grouped heads, D skip), the gated
// group RMSNorm norm(y * silu(z)), the out-projection added to the residual stream. Its memory is a
// fixed state per sequence (conv state, then SSM state) in the sequence memory's recurrent pool.
#pragma once

#include "host/engine/layers/layer.h"
#include "host/ops/reference/matmul.h"

namespace tessera::engine {

class Mamba2Mixer final : public Mixer {
 public:
  // Layer `layer` of `spec` (which must outlive this).
  Mamba2Mixer(const model::ModelSpec& spec, int layer);

  model::MixerKind kind() const override { return model::MixerKind::kMamba2; }
  LayerMemoryNeeds memory() const override;
  // Bytes of one sequence's state in a Mamba2 layer of `spec`: f32 conv state [conv channels]
  // [d_conv - 1], then the SSM state [d_state][d_inner].
  static uint64_t state_bytes(const model::ModelSpec& spec);

  void upload(DeviceCtx& c, WeightUploader& up, const kv::PagedKvCache& kv,
              const EngineOptions& options) override;
  // Device forward: reads the step's recurrent batch (c.recurrent_view) and this layer's state
  // buffer (s.states), updating each sequence's state in place.
  bool forward(DeviceCtx& c, const LayerStep& s, bool prenormed) override;
  cl_mem input_norm() const override { return dev_.attn_norm.get(); }
  // Reference forward over one sequence's chunk (positions only count the tokens): mem.state holds
  // the sequence's state (zeros when empty, i.e. a new sequence).
  void reference_forward(std::span<float> x, std::span<const int32_t> positions,
                         ReferenceLayerMemory& mem) const override;

 private:
  const model::ModelSpec& spec_;
  const model::LayerSpec& ls_;
  int layer_ = 0;
  struct DeviceWeights {
    ops::DeviceWeight in, out;
    ClMem attn_norm;
    // f32: conv weights [channels][d_conv] and bias (empty when none); A, D, dt bias per head;
    // the group norm's weights times the residual multiplier (Granite), which is linear in them.
    ClMem conv_w, conv_b, a, d, dt_b, norm;
  } dev_;
  struct ReferenceWeights {
    std::vector<float> attn_norm, conv_w, conv_b, a, d, dt_b, norm;
    reference::WeightMatrix in, out;
  } ref_;
};

}  // namespace tessera::engine
