// The MoE FFN with a shared expert (qwen2moe): the routed experts of MoeFfn plus a dense SwiGLU
// expert every token runs, its output scaled by sigmoid(ffn_gate_inp_shexp . x) for gated kinds.
// out = moe(norm(x)) + gate * shared(norm(x)); x += out.
#pragma once

#include "host/engine/layers/moe_ffn.h"
#include "host/ops/reference/ffn.h"

namespace tessera::engine {

class SharedMoeFfn final : public Ffn {
 public:
  // `moe` may be null when this layer runs on the reference path only.
  SharedMoeFfn(const model::ModelSpec& spec, int layer, MoeRuntime* moe);

  model::FfnKind kind() const override { return model::FfnKind::kMoeShared; }
  void upload(DeviceCtx& c, WeightUploader& up, const EngineOptions& options) override;
  // Device: the routed part's norm and top-k, then the shared expert on the layer's device (gate|up
  // GEMM, SwiGLU, down GEMM into c.partial, one launch adding it to c.x scaled by its gate), then
  // the routed experts and their combine (with the next layer's norm when fused). The shared expert
  // always runs on the layer's device; only routed experts are placed and balanced.
  bool forward(DeviceCtx& c, const LayerStep& s, cl_mem next_norm) override;
  void reference_forward(std::span<float> x) const override;
  MoeFfn* routed() override { return &routed_; }

 private:
  void shared_expert(DeviceCtx& c, int n);

  const model::ModelSpec& spec_;
  const model::LayerSpec& ls_;
  MoeFfn routed_;
  struct DeviceWeights {
    SwigluWeights ffn;
    ClMem gate_inp;  // f32 [n_embd]; empty for ungated kinds
  } dev_;
  // Reference: the whole layer as reference::moe_ffn computes it (routed experts + shared).
  std::vector<float> ref_ffn_norm_;
  reference::MoeWeights ref_;
  reference::RoutingConfig ref_routing_;
};

}  // namespace tessera::engine
