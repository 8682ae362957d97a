// The Mamba2 mixer: device forward (in-projection GEMM, conv1d + SiLU, selective scan, gated group
// norm, out-projection with the residual add: five launches after the norm) and its scalar
// reference.
#include "host/engine/layers/mamba2.h"

#include "host/model/weights.h"
#include "host/ops/device/ssm.h"
#include "host/ops/reference/norm.h"
#include "host/ops/reference/ssm.h"

namespace tessera::engine {

Mamba2Mixer::Mamba2Mixer(const model::ModelSpec& spec, int layer)
    : spec_(spec), ls_(spec.layers[size_t(layer)]), layer_(layer) {
  ref_.attn_norm = model::to_floats(*ls_.attn_norm);
  ref_.conv_w = model::to_floats(*ls_.ssm_conv1d);
  if (ls_.ssm_conv1d_b) ref_.conv_b = model::to_floats(*ls_.ssm_conv1d_b);
  ref_.a = model::to_floats(*ls_.ssm_a);
  ref_.d = model::to_floats(*ls_.ssm_d);
  ref_.dt_b = model::to_floats(*ls_.ssm_dt_b);
  ref_.norm = model::to_floats(*ls_.ssm_norm);
  ref_.in = model::as_matrix(*ls_.ssm_in);
  ref_.out = model::as_matrix(*ls_.ssm_out);
}

uint64_t Mamba2Mixer::state_bytes(const model::ModelSpec& spec) {
  return spec.hp.ssm_state_floats() * sizeof(float);
}

LayerMemoryNeeds Mamba2Mixer::memory() const {
  return {0, 0, state_bytes(spec_)};
}

void Mamba2Mixer::upload(DeviceCtx& c, WeightUploader& up, const kv::PagedKvCache&,
                         const EngineOptions& options) {
  const auto& hp = spec_.hp;
  dev_.attn_norm = up.norm(c, ls_.attn_norm);
  dev_.in = up.matrix(c, ls_.ssm_in);
  dev_.out = up.matrix(c, ls_.ssm_out);
  auto floats = [&](const std::vector<float>& v, const gguf::TensorInfo* t) {
    ClMem m = c.dev->alloc(v.size() * sizeof(float), CL_MEM_READ_ONLY);
    c.dev->write(m.get(), 0, v.data(), v.size() * sizeof(float));
    up.count(t->n_bytes());
    return m;
  };
  dev_.conv_w = floats(ref_.conv_w, ls_.ssm_conv1d);
  if (ls_.ssm_conv1d_b) dev_.conv_b = floats(ref_.conv_b, ls_.ssm_conv1d_b);
  dev_.a = floats(ref_.a, ls_.ssm_a);
  dev_.d = floats(ref_.d, ls_.ssm_d);
  dev_.dt_b = floats(ref_.dt_b, ls_.ssm_dt_b);
  std::vector<float> norm = ref_.norm;
  for (float& w : norm) w *= hp.residual_scale;
  dev_.norm = floats(norm, ls_.ssm_norm);
  using P = EngineOptions::ScanPrefill;
  const ops::PrefillForm form = options.scan_prefill == P::kChunked ? ops::PrefillForm::kChunked
                                : options.scan_prefill == P::kRecurrent
                                    ? ops::PrefillForm::kRecurrent
                                    : ops::PrefillForm::kAuto;
  c.use_recurrent(options.max_sequences, hp.ssm_in_rows(), hp.ssm_conv_channels(), hp.ssm_d_inner,
                  form);
}

bool Mamba2Mixer::forward(DeviceCtx& c, const LayerStep& s, bool prenormed) {
  const auto& hp = spec_.hp;
  const int n = s.n_tokens;
  const uint32_t E = hp.n_embd, DI = hp.ssm_d_inner, CH = hp.ssm_conv_channels();
  const uint32_t P = hp.ssm_in_rows(), BC = hp.ssm_n_group * hp.ssm_d_state;
  if (!prenormed)
    c.norm->rms_norm(c.x.get(), 0, dev_.attn_norm.get(), 0, c.xn.get(), 0, uint32_t(n), E,
                     hp.rms_eps, {{}, c.prof("norm")});
  // z | xBC | dt rows, one per token.
  c.mm->run(dev_.in, c.xn.get(), 0, c.ssm_proj.get(), 0, n, {}, c.prof("matmul"));
  const kv::RecurrentBatchView& v = c.recurrent_view;
  ops::RecurrentBatch batch{
      v.seqs, v.seqs_offset, uint32_t(v.n_seqs), s.states->layer(layer_), hp.ssm_state_floats(),
      0,      uint32_t(n)};
  c.ssm->conv1d_silu({c.ssm_proj.get(), DI, P}, dev_.conv_w.get(), 0,
                     dev_.conv_b ? dev_.conv_b.get() : nullptr, 0, batch, {c.ssm_conv.get(), 0, CH},
                     CH, hp.ssm_d_conv, {{}, c.prof("ssm")});
  batch.state_off = uint32_t(hp.ssm_conv_state_floats());
  const ops::Mamba2Dims dims{hp.ssm_n_head, DI / hp.ssm_n_head, hp.ssm_n_group, hp.ssm_d_state};
  c.ssm->mamba2_scan(dims, {c.ssm_conv.get(), 0, CH}, {c.ssm_proj.get(), DI + CH, P},
                     {c.ssm_conv.get(), DI, CH}, {c.ssm_conv.get(), DI + BC, CH}, dev_.a.get(), 0,
                     dev_.d.get(), 0, dev_.dt_b.get(), 0, batch, {c.ssm_y.get(), 0, DI},
                     {{}, c.prof("ssm")});
  c.ssm->gated_rms_norm({c.ssm_y.get(), 0, DI}, {c.ssm_proj.get(), 0, P}, dev_.norm.get(), 0, false,
                        {c.ssm_y.get(), 0, DI}, uint32_t(n), DI, DI / hp.ssm_n_group, hp.rms_eps,
                        true, {{}, c.prof("norm")});
  c.mm->run(dev_.out, c.ssm_y.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
  return false;
}

void Mamba2Mixer::reference_forward(std::span<float> x, std::span<const int32_t> positions,
                                    ReferenceLayerMemory& mem) const {
  const auto& hp = spec_.hp;
  const size_t T = positions.size(), E = hp.n_embd, DI = hp.ssm_d_inner;
  const size_t CH = hp.ssm_conv_channels(), P = hp.ssm_in_rows();
  const size_t BC = size_t(hp.ssm_n_group) * hp.ssm_d_state;
  if (mem.state.empty()) mem.state.assign(size_t(hp.ssm_state_floats()), 0.0f);
  const std::span<float> conv_state =
      std::span<float>(mem.state).first(size_t(hp.ssm_conv_state_floats()));
  const std::span<float> ssm_state =
      std::span<float>(mem.state).subspan(size_t(hp.ssm_conv_state_floats()));
  std::vector<float> cur(T * E), proj(T * P), xbc(T * CH), y(T * DI), out(T * E);
  reference::rms_norm(x, ref_.attn_norm, hp.rms_eps, cur);
  reference::matmul(cur, ref_.in, proj);
  const std::span<const float> pr(proj), xs(xbc);
  reference::conv1d_silu({pr.subspan(DI), P}, uint32_t(T), uint32_t(CH), ref_.conv_w, hp.ssm_d_conv,
                         ref_.conv_b, conv_state, {xbc, CH});
  const reference::Mamba2Shape shape{hp.ssm_n_head, uint32_t(DI) / hp.ssm_n_head, hp.ssm_n_group,
                                     hp.ssm_d_state};
  reference::mamba2_scan(shape, uint32_t(T), {xs, CH}, {pr.subspan(DI + CH), P},
                         {xs.subspan(DI), CH}, {xs.subspan(DI + BC), CH}, ref_.a, ref_.d, ref_.dt_b,
                         ssm_state, {y, DI});
  reference::gated_rms_norm({y, DI}, {pr, P}, uint32_t(T), uint32_t(DI),
                            uint32_t(DI) / hp.ssm_n_group, ref_.norm, hp.rms_eps, true, {y, DI});
  reference::matmul(y, ref_.out, out);
  for (size_t i = 0; i < x.size(); ++i) x[i] += hp.residual_scale * out[i];
}

}  // namespace tessera::engine
