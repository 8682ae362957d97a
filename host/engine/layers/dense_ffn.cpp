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
  if (WeightUploader::stackable({ls_.ffn_gate, ls_.ffn_up})) {
    dev_.gate_up = up.stacked(c, {ls_.ffn_gate, ls_.ffn_up});
  } else {
    dev_.gate = up.matrix(c, ls_.ffn_gate);
    dev_.up = up.matrix(c, ls_.ffn_up);
  }
  dev_.down = up.matrix(c, ls_.ffn_down);
}

bool DenseFfn::forward(DeviceCtx& c, const LayerStep& s, cl_mem) {
  const auto& hp = spec_.hp;
  const int n = s.n_tokens;
  const uint32_t ff = ls_.n_ff;
  c.norm->rms_norm(c.x.get(), 0, dev_.ffn_norm.get(), 0, c.xn.get(), 0, uint32_t(n), hp.n_embd,
                   hp.rms_eps, {{}, c.prof("norm")});
  if (dev_.gate_up.body) {
    c.mm->run(dev_.gate_up, c.xn.get(), 0, c.gu.get(), 0, n, {}, c.prof("matmul"));
  } else {
    c.mm->run(dev_.gate, c.xn.get(), 0, c.gu.get(), 0, n, {}, c.prof("matmul"), {2 * ff});
    c.mm->run(dev_.up, c.xn.get(), 0, c.gu.get(), ff, n, {}, c.prof("matmul"), {2 * ff});
  }
  c.act->swiglu({c.gu.get(), 0, 2 * ff}, {c.gu.get(), ff, 2 * ff}, {c.h.get(), 0, ff}, uint32_t(n),
                ff, {{}, c.prof("activation")});
  c.mm->run(dev_.down, c.h.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
  return false;  // the next layer's norm is not fused here
}

void DenseFfn::reference_forward(std::span<float> x) const {
  const auto& hp = spec_.hp;
  std::vector<float> cur(x.size()), out(x.size());
  reference::rms_norm(x, ref_.ffn_norm, hp.rms_eps, cur);
  reference::ffn_swiglu(cur, ref_.gate, ref_.up, ref_.down, out);
  for (size_t i = 0; i < x.size(); ++i) x[i] += out[i];
}

}  // namespace tessera::engine
