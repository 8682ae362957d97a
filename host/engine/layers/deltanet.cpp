// The Gated DeltaNet mixer: device forward (projection GEMM, conv1d + SiLU, the gated delta rule,
// gated norm, out-projection with the residual add: five launches after the norm when the three
// projections share a format) and its scalar reference.
#include "host/engine/layers/deltanet.h"

#include "host/model/weights.h"
#include "host/ops/device/deltanet.h"
#include "host/ops/device/ssm.h"
#include "host/ops/reference/deltanet.h"
#include "host/ops/reference/norm.h"
#include "host/ops/reference/ssm.h"

namespace tessera::engine {
namespace {

// The chunk of the reference's chunked delta rule (llama.cpp's build_delta_net_chunking: 64).
constexpr uint32_t kReferenceChunk = 64;

// Widths of the projection row q | k | v | z | beta,alpha and where each part starts.
struct ProjLayout {
  uint32_t qk = 0;    // q (or k) floats: key heads x d_k
  uint32_t conv = 0;  // q | k | v: the conv channels
  uint32_t z = 0;     // offset of z (d_inner floats)
  uint32_t ba = 0;    // offset of beta | alpha (2 x value heads)
  uint32_t width = 0;
};

ProjLayout proj_layout(const model::HParams& hp) {
  ProjLayout p;
  p.qk = hp.ssm_n_group * hp.ssm_d_state;
  p.conv = hp.ssm_conv_channels();
  p.z = p.conv;
  p.ba = p.z + hp.ssm_d_inner;
  p.width = p.ba + 2 * hp.ssm_n_head;
  return p;
}

// Rows of a fused ssm_in (per key head: q, k, its value heads' v, their z) in attn_qkv's order
// (every q, every k, every v) or, for `z`, attn_gate's. Whole ggml rows are moved, so any format.
std::vector<uint8_t> regroup_fused(const gguf::TensorInfo& t, const model::HParams& hp, bool z) {
  const uint64_t dk = hp.ssm_d_state, nk = hp.ssm_n_group, r = hp.ssm_n_head / nk;
  const uint64_t group = 2 * dk + 2 * r * dk;  // rows per key head
  const uint64_t row = gguf::row_bytes(t.type, t.dims[0]);
  std::vector<uint8_t> out;
  auto take = [&](uint64_t src, uint64_t n) {
    out.insert(out.end(), t.data + src * row, t.data + (src + n) * row);
  };
  if (z) {
    for (uint64_t kh = 0; kh < nk; ++kh) take(kh * group + 2 * dk + r * dk, r * dk);
    return out;
  }
  for (uint64_t kh = 0; kh < nk; ++kh) take(kh * group, dk);
  for (uint64_t kh = 0; kh < nk; ++kh) take(kh * group + dk, dk);
  for (uint64_t kh = 0; kh < nk; ++kh) take(kh * group + 2 * dk, r * dk);
  return out;
}

}  // namespace

GatedDeltaNetMixer::GatedDeltaNetMixer(const model::ModelSpec& spec, int layer)
    : spec_(spec), ls_(spec.layers[size_t(layer)]), layer_(layer) {
  ref_.attn_norm = model::to_floats(*ls_.attn_norm);
  ref_.conv_w = model::to_floats(*ls_.ssm_conv1d);
  ref_.a = model::to_floats(*ls_.ssm_a);
  ref_.dt_b = model::to_floats(*ls_.ssm_dt_b);
  ref_.norm = model::to_floats(*ls_.ssm_norm);
  ref_.ba = model::as_matrix(*ls_.ssm_ba);
  ref_.out = model::as_matrix(*ls_.ssm_out);
}

GatedDeltaNetMixer::Projections GatedDeltaNetMixer::projections() const {
  Projections p;
  if (!ls_.ssm_in) {
    p.qkv = model::as_matrix(*ls_.ssm_qkv);
    p.gate = model::as_matrix(*ls_.ssm_gate);
    return p;
  }
  const gguf::TensorInfo& t = *ls_.ssm_in;
  p.qkv_rows = regroup_fused(t, spec_.hp, false);
  p.gate_rows = regroup_fused(t, spec_.hp, true);
  p.qkv = {t.type, p.qkv_rows.data(), int64_t(t.dims[0]), spec_.hp.ssm_conv_channels()};
  p.gate = {t.type, p.gate_rows.data(), int64_t(t.dims[0]), spec_.hp.ssm_d_inner};
  return p;  // moving the vectors keeps their buffers, so the views stay valid
}

uint64_t GatedDeltaNetMixer::state_bytes(const model::ModelSpec& spec) {
  // conv state, then d_state (= d_k) x d_inner (= n_v_head x d_v): HParams' formula fits both
  // recurrent mixers.
  return spec.hp.ssm_state_floats() * sizeof(float);
}

LayerMemoryNeeds GatedDeltaNetMixer::memory() const {
  return {0, 0, state_bytes(spec_)};
}

void GatedDeltaNetMixer::upload(DeviceCtx& c, WeightUploader& up, const kv::PagedKvCache&,
                                const EngineOptions& options) {
  const auto& hp = spec_.hp;
  dev_.attn_norm = up.norm(c, ls_.attn_norm);
  // The q | k | v and z matrices (a fused ssm_in regrouped; the copy is dropped after upload).
  const Projections p = projections();
  const reference::WeightMatrix& qkv = p.qkv;
  const reference::WeightMatrix& gate = p.gate;
  const gguf::TensorInfo& ba = *ls_.ssm_ba;
  auto bytes_of = [](const reference::WeightMatrix& m) {
    return m.row_stride() * uint64_t(m.rows);
  };
  if (qkv.type == gate.type && qkv.type == ba.type) {
    std::vector<uint8_t> all(qkv.data, qkv.data + bytes_of(qkv));
    all.insert(all.end(), gate.data, gate.data + bytes_of(gate));
    all.insert(all.end(), ba.data, ba.data + ba.n_bytes());
    dev_.proj =
        c.mm->upload(qkv.type, qkv.rows + gate.rows + int64_t(ba.dims[1]), qkv.cols, all.data());
    up.count(all.size());
  } else {
    dev_.qkv = c.mm->upload(qkv.type, qkv.rows, qkv.cols, qkv.data);
    dev_.gate = c.mm->upload(gate.type, gate.rows, gate.cols, gate.data);
    up.count(bytes_of(qkv) + bytes_of(gate));
    dev_.ba = up.matrix(c, ls_.ssm_ba);
  }
  dev_.out = up.matrix(c, ls_.ssm_out);
  auto floats = [&](const std::vector<float>& v, const gguf::TensorInfo* t) {
    ClMem m = c.dev->alloc(v.size() * sizeof(float), CL_MEM_READ_ONLY);
    c.dev->write(m.get(), 0, v.data(), v.size() * sizeof(float));
    up.count(t->n_bytes());
    return m;
  };
  dev_.conv_w = floats(ref_.conv_w, ls_.ssm_conv1d);
  dev_.a = floats(ref_.a, ls_.ssm_a);
  dev_.dt_b = floats(ref_.dt_b, ls_.ssm_dt_b);
  dev_.norm = floats(ref_.norm, ls_.ssm_norm);
  c.use_recurrent(options.max_sequences, proj_layout(hp).width, hp.ssm_conv_channels(),
                  hp.ssm_d_inner);
  using P = EngineOptions::ScanPrefill;
  const ops::PrefillForm form = options.scan_prefill == P::kChunked ? ops::PrefillForm::kChunked
                                : options.scan_prefill == P::kRecurrent
                                    ? ops::PrefillForm::kRecurrent
                                    : ops::PrefillForm::kAuto;
  if (!c.deltanet)
    c.deltanet = std::make_unique<ops::DeltaNetOps>(*c.dev, ops::ScanForm::kAuto, form);
}

bool GatedDeltaNetMixer::forward(DeviceCtx& c, const LayerStep& s, bool prenormed) {
  const auto& hp = spec_.hp;
  const int n = s.n_tokens;
  const uint32_t E = hp.n_embd, DI = hp.ssm_d_inner;
  const ProjLayout p = proj_layout(hp);
  if (!prenormed)
    c.norm->rms_norm(c.x.get(), 0, dev_.attn_norm.get(), 0, c.xn.get(), 0, uint32_t(n), E,
                     hp.rms_eps, {{}, c.prof("norm")});
  // q | k | v | z | beta,alpha rows, one per token.
  if (dev_.proj.body) {
    c.mm->run(dev_.proj, c.xn.get(), 0, c.ssm_proj.get(), 0, n, {}, c.prof("matmul"));
  } else {
    c.mm->run(dev_.qkv, c.xn.get(), 0, c.ssm_proj.get(), 0, n, {}, c.prof("matmul"), {p.width});
    c.mm->run(dev_.gate, c.xn.get(), 0, c.ssm_proj.get(), p.z, n, {}, c.prof("matmul"), {p.width});
    c.mm->run(dev_.ba, c.xn.get(), 0, c.ssm_proj.get(), p.ba, n, {}, c.prof("matmul"), {p.width});
  }
  const kv::RecurrentBatchView& v = c.recurrent_view;
  ops::RecurrentBatch batch{
      v.seqs, v.seqs_offset, uint32_t(v.n_seqs), s.states->layer(layer_), hp.ssm_state_floats(),
      0,      uint32_t(n)};
  c.ssm->conv1d_silu({c.ssm_proj.get(), 0, p.width}, dev_.conv_w.get(), 0, nullptr, 0, batch,
                     {c.ssm_conv.get(), 0, p.conv}, p.conv, hp.ssm_d_conv, {{}, c.prof("ssm")});
  batch.state_off = uint32_t(hp.ssm_conv_state_floats());
  const ops::DeltaNetDims dims{hp.ssm_n_group, hp.ssm_n_head, hp.ssm_d_state, DI / hp.ssm_n_head};
  c.deltanet->recurrent(dims, {c.ssm_conv.get(), 0, p.conv}, {c.ssm_conv.get(), p.qk, p.conv},
                        {c.ssm_conv.get(), 2 * p.qk, p.conv}, {c.ssm_proj.get(), p.ba, p.width},
                        dev_.a.get(), 0, dev_.dt_b.get(), 0, hp.rms_eps, batch,
                        {c.ssm_y.get(), 0, DI}, {{}, c.prof("ssm")});
  c.ssm->gated_rms_norm({c.ssm_y.get(), 0, DI}, {c.ssm_proj.get(), p.z, p.width}, dev_.norm.get(),
                        0, true, {c.ssm_y.get(), 0, DI}, uint32_t(n), DI, DI / hp.ssm_n_head,
                        hp.rms_eps, false, {{}, c.prof("norm")});
  c.mm->run(dev_.out, c.ssm_y.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
  return false;
}

void GatedDeltaNetMixer::reference_forward(std::span<float> x, std::span<const int32_t> positions,
                                           ReferenceLayerMemory& mem) const {
  const auto& hp = spec_.hp;
  const size_t T = positions.size(), E = hp.n_embd, DI = hp.ssm_d_inner;
  const ProjLayout p = proj_layout(hp);
  const size_t CH = p.conv, QK = p.qk, NV = hp.ssm_n_head;
  if (mem.state.empty()) mem.state.assign(size_t(hp.ssm_state_floats()), 0.0f);
  const std::span<float> conv_state =
      std::span<float>(mem.state).first(size_t(hp.ssm_conv_state_floats()));
  const std::span<float> dn_state =
      std::span<float>(mem.state).subspan(size_t(hp.ssm_conv_state_floats()));
  std::vector<float> cur(T * E), qkv(T * CH), z(T * DI), ba(T * 2 * NV), conv(T * CH), o(T * DI),
      out(T * E);
  reference::rms_norm(x, ref_.attn_norm, hp.rms_eps, cur);
  std::call_once(ref_.proj_once, [&] { ref_.proj.emplace(projections()); });
  reference::matmul(cur, ref_.proj->qkv, qkv);
  reference::matmul(cur, ref_.proj->gate, z);
  reference::matmul(cur, ref_.ba, ba);
  reference::conv1d_silu({qkv, CH}, uint32_t(T), uint32_t(CH), ref_.conv_w, hp.ssm_d_conv, {},
                         conv_state, {conv, CH});
  const reference::DeltaNetShape shape{hp.ssm_n_group, hp.ssm_n_head, hp.ssm_d_state,
                                       uint32_t(DI / NV)};
  const std::span<const float> cs(conv);
  const reference::ConstRows q{cs, CH}, k{cs.subspan(QK), CH}, vv{cs.subspan(2 * QK), CH},
      bar{ba, 2 * NV};
  if (T > 1)
    reference::deltanet_chunked(shape, uint32_t(T), kReferenceChunk, q, k, vv, bar, ref_.a,
                                ref_.dt_b, hp.rms_eps, dn_state, {o, DI});
  else
    reference::deltanet_recurrent(shape, uint32_t(T), q, k, vv, bar, ref_.a, ref_.dt_b, hp.rms_eps,
                                  dn_state, {o, DI});
  reference::gated_rms_norm({o, DI}, {z, DI}, uint32_t(T), uint32_t(DI), uint32_t(DI / NV),
                            ref_.norm, hp.rms_eps, false, {o, DI});
  reference::matmul(o, ref_.out, out);
  for (size_t i = 0; i < x.size(); ++i) x[i] += out[i];
}

}  // namespace tessera::engine
