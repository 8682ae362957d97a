// The layer list of a model and the weight uploader the layers share.
#include "host/engine/layers/layer.h"

#include <algorithm>

#include "host/engine/layers/attention.h"
#include "host/engine/layers/deltanet.h"
#include "host/engine/layers/dense_ffn.h"
#include "host/engine/layers/mamba2.h"
#include "host/engine/layers/moe_ffn.h"
#include "host/engine/layers/shared_moe_ffn.h"
#include "host/model/weights.h"

namespace tessera::engine {

namespace {
uint64_t tensor_bytes(const gguf::TensorInfo* t) {
  return t ? t->n_bytes() : 0;
}
}  // namespace

void WeightUploader::count(uint64_t bytes) {
  done_ += bytes;
  if (progress_) progress_(done_, std::max(total_, done_));
}

ops::DeviceWeight WeightUploader::matrix(DeviceCtx& c, const gguf::TensorInfo* t) {
  ops::DeviceWeight w = c.mm->upload(t->type, int64_t(t->dims[1]), int64_t(t->dims[0]), t->data);
  count(t->n_bytes());
  return w;
}

ops::DeviceWeight WeightUploader::stacked(DeviceCtx& c,
                                          std::initializer_list<const gguf::TensorInfo*> ts) {
  std::vector<uint8_t> bytes;
  int64_t rows = 0;
  for (const auto* t : ts) {
    bytes.insert(bytes.end(), t->data, t->data + t->n_bytes());
    rows += int64_t(t->dims[1]);
  }
  const auto* first = *ts.begin();
  ops::DeviceWeight w = c.mm->upload(first->type, rows, int64_t(first->dims[0]), bytes.data());
  count(bytes.size());
  return w;
}

bool WeightUploader::stackable(std::initializer_list<const gguf::TensorInfo*> ts) {
  const auto* first = *ts.begin();
  for (const auto* t : ts)
    if (!t || t->type != first->type || t->dims[0] != first->dims[0]) return false;
  return true;
}

ClMem WeightUploader::norm(DeviceCtx& c, const gguf::TensorInfo* t) {
  if (!t) return ClMem();
  const std::vector<float> v = model::to_floats(*t);
  ClMem m = c.dev->alloc(v.size() * sizeof(float), CL_MEM_READ_ONLY);
  c.dev->write(m.get(), 0, v.data(), v.size() * sizeof(float));
  count(t->n_bytes());
  return m;
}

SwigluWeights upload_swiglu(DeviceCtx& c, WeightUploader& up, const gguf::TensorInfo* gate,
                            const gguf::TensorInfo* up_t, const gguf::TensorInfo* down) {
  SwigluWeights w;
  if (WeightUploader::stackable({gate, up_t})) {
    w.gate_up = up.stacked(c, {gate, up_t});
  } else {
    w.gate = up.matrix(c, gate);
    w.up = up.matrix(c, up_t);
  }
  w.down = up.matrix(c, down);
  return w;
}

void swiglu_hidden(DeviceCtx& c, const SwigluWeights& w, uint32_t ff, int n) {
  if (w.gate_up.body) {
    c.mm->run(w.gate_up, c.xn.get(), 0, c.gu.get(), 0, n, {}, c.prof("matmul"));
  } else {
    c.mm->run(w.gate, c.xn.get(), 0, c.gu.get(), 0, n, {}, c.prof("matmul"), {2 * ff});
    c.mm->run(w.up, c.xn.get(), 0, c.gu.get(), ff, n, {}, c.prof("matmul"), {2 * ff});
  }
  c.act->swiglu({c.gu.get(), 0, 2 * ff}, {c.gu.get(), ff, 2 * ff}, {c.h.get(), 0, ff}, uint32_t(n),
                ff, {{}, c.prof("activation")});
}

std::vector<Layer> make_layers(const model::ModelSpec& spec, MoeRuntime* moe) {
  std::vector<Layer> layers;
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const auto& ls = spec.layers[l];
    Layer layer;
    switch (ls.mixer) {
      case model::MixerKind::kAttention:
        layer.mixer = std::make_unique<AttentionMixer>(spec, int(l));
        break;
      case model::MixerKind::kMamba2:
        layer.mixer = std::make_unique<Mamba2Mixer>(spec, int(l));
        break;
      case model::MixerKind::kGatedDeltaNet:
        layer.mixer = std::make_unique<GatedDeltaNetMixer>(spec, int(l));
        break;
    }
    switch (ls.ffn) {
      case model::FfnKind::kDense:
        layer.ffn = std::make_unique<DenseFfn>(spec, int(l));
        break;
      case model::FfnKind::kMoe:
        layer.ffn = std::make_unique<MoeFfn>(spec, int(l), moe);
        break;
      case model::FfnKind::kMoeShared:
        layer.ffn = std::make_unique<SharedMoeFfn>(spec, int(l), moe);
        break;
    }
    layers.push_back(std::move(layer));
  }
  return layers;
}

uint64_t upload_bytes(const model::ModelSpec& spec) {
  uint64_t total = 0;
  for (const auto& t : spec.layers)
    for (auto* p :
         {t.attn_norm,      t.wq,         t.wk,           t.wv,         t.wo,       t.q_norm,
          t.k_norm,         t.ffn_norm,   t.ffn_gate,     t.ffn_up,     t.ffn_down, t.router,
          t.gate_exps,      t.up_exps,    t.down_exps,    t.bq,         t.bk,       t.bv,
          t.gate_inp_shexp, t.gate_shexp, t.up_shexp,     t.down_shexp, t.bo,       t.sinks,
          t.ssm_in,         t.ssm_conv1d, t.ssm_conv1d_b, t.ssm_dt_b,   t.ssm_a,    t.ssm_d,
          t.ssm_norm,       t.ssm_out,    t.ssm_qkv,      t.ssm_gate,   t.ssm_ba})
      total += tensor_bytes(p);
  total += tensor_bytes(spec.token_embd) * (spec.output_tied ? 2 : 1) +
           tensor_bytes(spec.output_norm) + (spec.output_tied ? 0 : tensor_bytes(spec.output));
  return total;
}

}  // namespace tessera::engine
