// Gated DeltaNet as a layer's mixer (Qwen3-Next's linear-attention layers, llama.cpp's
// qwen3next build_layer_attn_linear): RMSNorm, projections into q | k | v (attn_qkv), the output
// gate z (attn_gate) and beta | alpha (ssm_ba), the short causal conv1d + SiLU over q | k | v with
// its rolling state, the gated delta rule (L2-normalised q and k, beta = sigmoid(b), decay
// exp(-exp(A_log) softplus(alpha + dt_bias))), the gated RMSNorm norm(o) * silu(z) per head, the
// out-projection added to the residual stream. Its memory is a fixed state per sequence (conv
// state, then the delta rule's state) in the sequence memory's recurrent pool.
#pragma once

#include <mutex>
#include <optional>

#include "host/engine/layers/layer.h"
#include "host/ops/reference/matmul.h"

namespace tessera::engine {

class GatedDeltaNetMixer final : public Mixer {
 public:
  // Layer `layer` of `spec` (which must outlive this).
  GatedDeltaNetMixer(const model::ModelSpec& spec, int layer);

  model::MixerKind kind() const override { return model::MixerKind::kGatedDeltaNet; }
  LayerMemoryNeeds memory() const override;
  // Bytes of one sequence's state in a Gated DeltaNet layer of `spec`: f32 conv state [conv
  // channels][d_conv - 1], then the delta rule's state [d_k][n_v_head * d_v].
  static uint64_t state_bytes(const model::ModelSpec& spec);

  void upload(DeviceCtx& c, WeightUploader& up, const kv::PagedKvCache& kv,
              const EngineOptions& options) override;
  // Device forward: reads the step's recurrent batch (c.recurrent_view) and this layer's state
  // buffer (s.states), updating each sequence's state in place. The delta rule runs token by
  // token within each sequence (one work item per value row), prefill chunks and decode alike.
  bool forward(DeviceCtx& c, const LayerStep& s, bool prenormed) override;
  cl_mem input_norm() const override { return dev_.attn_norm.get(); }
  // Reference forward over one sequence's chunk: mem.state holds the sequence's state (zeros when
  // empty, i.e. a new sequence). Chunks of more than one token take the chunked (triangular-solve)
  // form of the delta rule, single tokens the recurrent one, so the engine's token-by-token kernel
  // is checked against the other form.
  void reference_forward(std::span<float> x, std::span<const int32_t> positions,
                         ReferenceLayerMemory& mem) const override;

 private:
  const model::ModelSpec& spec_;
  const model::LayerSpec& ls_;
  int layer_ = 0;
  struct DeviceWeights {
    // proj: attn_qkv, attn_gate and ssm_ba stacked (one launch) when they share a format; else
    // qkv, gate and ba apart, writing the same q | k | v | z | beta,alpha rows.
    ops::DeviceWeight proj, qkv, gate, ba, out;
    ClMem attn_norm;
    ClMem conv_w, a, dt_b, norm;  // f32: conv taps [channels][d_conv]; A, dt bias per value head
  } dev_;
  // The q | k | v and z matrices: views of attn_qkv and attn_gate, or of a fused ssm_in's rows
  // regrouped into their order (held in qkv_rows / gate_rows).
  struct Projections {
    reference::WeightMatrix qkv, gate;
    std::vector<uint8_t> qkv_rows, gate_rows;
  };
  Projections projections() const;
  struct ReferenceWeights {
    std::vector<float> attn_norm, conv_w, a, dt_b, norm;
    reference::WeightMatrix ba, out;
    // Built on the reference path's first use (the device path regroups a fused ssm_in at upload
    // and keeps no host copy).
    mutable std::once_flag proj_once;
    mutable std::optional<Projections> proj;
  } ref_;
};

}  // namespace tessera::engine
