// The MoE FFN with a shared expert on the device and its scalar reference. Granite's residual
// multiplier: in the routed weights (MoeFfn) and on the shared expert's hidden row.
#include "host/engine/layers/shared_moe_ffn.h"

#include "host/model/weights.h"
#include "host/ops/reference/norm.h"

namespace tessera::engine {

SharedMoeFfn::SharedMoeFfn(const model::ModelSpec& spec, int layer, MoeRuntime* moe)
    : spec_(spec),
      ls_(spec.layers[size_t(layer)]),
      routed_(spec, layer, moe),
      ref_ffn_norm_(model::to_floats(*ls_.ffn_norm)),
      ref_{model::as_matrix(*ls_.router), model::as_experts(*ls_.gate_exps),
           model::as_experts(*ls_.up_exps), model::as_experts(*ls_.down_exps),
           reference::SharedExpert{
               model::as_matrix(*ls_.gate_shexp), model::as_matrix(*ls_.up_shexp),
               model::as_matrix(*ls_.down_shexp),
               ls_.gate_inp_shexp ? std::optional(model::as_matrix(*ls_.gate_inp_shexp))
                                  : std::nullopt}},
      ref_routing_(routing_config(spec)) {}

void SharedMoeFfn::upload(DeviceCtx& c, WeightUploader& up, const EngineOptions& options) {
  routed_.upload(c, up, options);
  dev_.ffn = upload_swiglu(c, up, ls_.gate_shexp, ls_.up_shexp, ls_.down_shexp);
  dev_.gate_inp = up.norm(c, ls_.gate_inp_shexp);  // f32 on the device (empty when ungated)
}

void SharedMoeFfn::shared_expert(DeviceCtx& c, int n) {
  const auto& hp = spec_.hp;
  const uint32_t ff = hp.n_ff_shexp, E = hp.n_embd;
  swiglu_hidden(c, dev_.ffn, ff, n);
  if (hp.residual_scale != 1.0f)  // Granite: x += s * down(h) = down(s * h)
    c.ew->scale(c.h.get(), 0, uint64_t(n) * ff, hp.residual_scale, {{}, c.prof("elementwise")});
  if (!dev_.gate_inp) {
    c.mm->run(dev_.ffn.down, c.h.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
    return;
  }
  c.mm->run(dev_.ffn.down, c.h.get(), 0, c.partial.get(), 0, n, {}, c.prof("matmul"));
  c.moe->shared_gate_add(c.x.get(), 0, c.partial.get(), 0, c.xn.get(), 0, dev_.gate_inp.get(),
                         uint32_t(n), E, {{}, c.prof("moe_combine")});
}

bool SharedMoeFfn::forward(DeviceCtx& c, const LayerStep& s, cl_mem next_norm) {
  // The shared expert reads the normed input the router used and adds into x before the routed
  // combine, which may overwrite xn with the next layer's norm.
  routed_.route(c, s);
  shared_expert(c, s.n_tokens);
  return routed_.experts(c, s, next_norm);
}

void SharedMoeFfn::reference_forward(std::span<float> x) const {
  std::vector<float> cur(x.size()), out(x.size());
  reference::rms_norm(x, ref_ffn_norm_, spec_.hp.rms_eps, cur);
  reference::moe_ffn(cur, ref_, ref_routing_, out);
  for (size_t i = 0; i < x.size(); ++i) x[i] += spec_.hp.residual_scale * out[i];
}

}  // namespace tessera::engine
