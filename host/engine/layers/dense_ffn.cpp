// The dense FFN on the device (stacked gate|up GEMM, SwiGLU, down GEMM accumulating into the
// residual stream) and its scalar reference.
#include "host/engine/layers/dense_ffn.h"

#include "host/model/weights.h"
#include "host/ops/reference/ffn.h"
#include "host/ops/reference/norm.h"

namespace tessera::engine {

DenseFfn::DenseFfn(const model::ModelSpec& spec, int layer)
    : spec_(spec), ls_(spec.layers[size_t(layer)]) {
  ref_.ffn_norm = model::to_floats(*ls_.ffn_norm);
  ref_.gate = model::as_matrix(*ls_.ffn_gate);
  ref_.up = model::as_matrix(*ls_.ffn_up);
  ref_.down = model::as_matrix(*ls_.ffn_down);
}

void DenseFfn::upload(DeviceCtx& c, WeightUploader& up, const EngineOptions&) {
  dev_.ffn_norm = up.norm(c, ls_.ffn_norm);
  dev_.ffn = upload_swiglu(c, up, ls_.ffn_gate, ls_.ffn_up, ls_.ffn_down);
}

bool DenseFfn::forward(DeviceCtx& c, const LayerStep& s, cl_mem) {
  const auto& hp = spec_.hp;
  const int n = s.n_tokens;
  c.norm->rms_norm(c.x.get(), 0, dev_.ffn_norm.get(), 0, c.xn.get(), 0, uint32_t(n), hp.n_embd,
                   hp.rms_eps, {{}, c.prof("norm")});
  swiglu_hidden(c, dev_.ffn, ls_.n_ff, n);
  if (hp.residual_scale != 1.0f)  // Granite: x += s * down(h) = down(s * h)
    c.ew->scale(c.h.get(), 0, uint64_t(n) * ls_.n_ff, hp.residual_scale,
                {{}, c.prof("elementwise")});
  c.mm->run(dev_.ffn.down, c.h.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
  return false;  // the next layer's norm is not fused here
}

void DenseFfn::reference_forward(std::span<float> x) const {
  const auto& hp = spec_.hp;
  std::vector<float> cur(x.size()), out(x.size());
  reference::rms_norm(x, ref_.ffn_norm, hp.rms_eps, cur);
  reference::ffn_swiglu(cur, ref_.gate, ref_.up, ref_.down, out);
  for (size_t i = 0; i < x.size(); ++i) x[i] += hp.residual_scale * out[i];
}

}  // namespace tessera::engine
