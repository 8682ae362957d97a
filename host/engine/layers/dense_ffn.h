// The dense SwiGLU FFN: RMSNorm, gate | up projections, SwiGLU, down projection added to the
// residual stream.
#pragma once

#include "host/engine/layers/layer.h"
#include "host/ops/reference/matmul.h"

namespace tessera::engine {

class DenseFfn final : public Ffn {
 public:
  DenseFfn(const model::ModelSpec& spec, int layer);  // spec must outlive this

  model::FfnKind kind() const override { return model::FfnKind::kDense; }
  void upload(DeviceCtx& c, WeightUploader& up, const EngineOptions& options) override;
  bool forward(DeviceCtx& c, const LayerStep& s, cl_mem next_norm) override;
  void reference_forward(std::span<float> x) const override;

 private:
  const model::ModelSpec& spec_;
  const model::LayerSpec& ls_;
  struct DeviceWeights {
    SwigluWeights ffn;
    ClMem ffn_norm;
  } dev_;
  struct ReferenceWeights {
    std::vector<float> ffn_norm;
    reference::WeightMatrix gate, up, down;
  } ref_;
};

}  // namespace tessera::engine
