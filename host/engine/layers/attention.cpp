// The attention mixer: device forward (stacked q|k|v GEMV, qkv_finish, prefill or split-K decode,
// output projection with the residual add) and its scalar reference.
#include "host/engine/layers/attention.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "host/common/error.h"
#include "host/model/weights.h"
#include "host/ops/reference/activation.h"
#include "host/ops/reference/attention.h"
#include "host/ops/reference/elementwise.h"
#include "host/ops/reference/norm.h"
#include "host/ops/reference/rope.h"

namespace tessera::engine {

AttentionMixer::AttentionMixer(const model::ModelSpec& spec, int layer)
    : spec_(spec), ls_(spec.layers[size_t(layer)]), layer_(layer) {
  if (ls_.window > uint32_t(INT32_MAX))
    throw model::ModelError(spec.source + ": layer " + std::to_string(layer) + ": window " +
                            std::to_string(ls_.window) + " too large");
  q_dim_ = spec.hp.q_dim();
  kv_dim_ = ls_.kv_dim(spec.hp);
  gate_dim_ = spec.arch->gated_attention ? q_dim_ : 0;
  ref_.attn_norm = model::to_floats(*ls_.attn_norm);
  if (ls_.q_norm) ref_.q_norm = model::to_floats(*ls_.q_norm);
  if (ls_.k_norm) ref_.k_norm = model::to_floats(*ls_.k_norm);
  ref_.wq = model::as_matrix(*ls_.wq);
  ref_.wk = model::as_matrix(*ls_.wk);
  ref_.wv = model::as_matrix(*ls_.wv);
  ref_.wo = model::as_matrix(*ls_.wo);
  if (spec.rope_freqs) ref_.rope_freqs = model::to_floats(*spec.rope_freqs);
  if (ls_.bo) ref_.bo = model::to_floats(*ls_.bo);
  if (ls_.sinks) ref_.sinks = model::to_floats(*ls_.sinks);
  if (ls_.bq) {
    ref_.bq = model::to_floats(*ls_.bq);
    ref_.bk = model::to_floats(*ls_.bk);
    ref_.bv = model::to_floats(*ls_.bv);
  }
}

uint64_t AttentionMixer::kv_bytes_per_token(const model::ModelSpec& spec, int layer,
                                            kv::KvFormat k_format, kv::KvFormat v_format) {
  const auto& ls = spec.layers[size_t(layer)];
  const uint32_t head_dim = uint32_t(spec.hp.head_dim);
  return uint64_t(ls.n_head_kv) * (kv::kv_bytes_per_token_head(k_format, head_dim) +
                                   kv::kv_bytes_per_token_head(v_format, head_dim));
}

LayerMemoryNeeds AttentionMixer::memory() const {
  return {kv_bytes_per_token(spec_, layer_), ls_.window, 0};
}

void AttentionMixer::upload(DeviceCtx& c, WeightUploader& up, const kv::PagedKvCache& kv,
                            const EngineOptions& options) {
  dev_.attn_norm = up.norm(c, ls_.attn_norm);
  dev_.q_norm = up.norm(c, ls_.q_norm);
  dev_.k_norm = up.norm(c, ls_.k_norm);
  if (gate_dim_ > 0) {
    // attn_q holds per head the query's head_dim rows then the gate's: regroup its rows (whole
    // ggml rows, so any format) into every query row, then every gate row.
    const gguf::TensorInfo& t = *ls_.wq;
    const uint64_t row = gguf::row_bytes(t.type, t.dims[0]), hd = spec_.hp.head_dim;
    std::vector<uint8_t> q_rows(q_dim_ * row), gate_rows(q_dim_ * row);
    for (uint64_t h = 0; h < spec_.hp.n_head; ++h) {
      std::memcpy(q_rows.data() + h * hd * row, t.data + 2 * h * hd * row, hd * row);
      std::memcpy(gate_rows.data() + h * hd * row, t.data + (2 * h + 1) * hd * row, hd * row);
    }
    const int64_t cols = int64_t(t.dims[0]);
    if (options.fuse.qkv && WeightUploader::stackable({ls_.wq, ls_.wk, ls_.wv})) {
      std::vector<uint8_t> all = q_rows;
      all.insert(all.end(), ls_.wk->data, ls_.wk->data + ls_.wk->n_bytes());
      all.insert(all.end(), ls_.wv->data, ls_.wv->data + ls_.wv->n_bytes());
      all.insert(all.end(), gate_rows.begin(), gate_rows.end());
      dev_.wqkv =
          c.mm->upload(t.type, 2 * int64_t(q_dim_) + 2 * int64_t(kv_dim_), cols, all.data());
      up.count(all.size());
    } else {
      dev_.wq = c.mm->upload(t.type, q_dim_, cols, q_rows.data());
      dev_.wgate = c.mm->upload(t.type, q_dim_, cols, gate_rows.data());
      up.count(t.n_bytes());
      dev_.wk = up.matrix(c, ls_.wk);
      dev_.wv = up.matrix(c, ls_.wv);
    }
  } else if (options.fuse.qkv && WeightUploader::stackable({ls_.wq, ls_.wk, ls_.wv})) {
    dev_.wqkv = up.stacked(c, {ls_.wq, ls_.wk, ls_.wv});
  } else {
    dev_.wq = up.matrix(c, ls_.wq);
    dev_.wk = up.matrix(c, ls_.wk);
    dev_.wv = up.matrix(c, ls_.wv);
  }
  dev_.wo = up.matrix(c, ls_.wo);
  if (ls_.bq) {
    std::vector<float> bias = ref_.bq;
    bias.insert(bias.end(), ref_.bk.begin(), ref_.bk.end());
    bias.insert(bias.end(), ref_.bv.begin(), ref_.bv.end());
    dev_.qkv_bias = c.dev->alloc(bias.size() * sizeof(float), CL_MEM_READ_ONLY);
    c.dev->write(dev_.qkv_bias.get(), 0, bias.data(), bias.size() * sizeof(float));
    up.count(ls_.bq->n_bytes() + ls_.bk->n_bytes() + ls_.bv->n_bytes());
  }
  auto upload_floats = [&](const std::vector<float>& v, const gguf::TensorInfo* t) {
    ClMem m = c.dev->alloc(v.size() * sizeof(float), CL_MEM_READ_ONLY);
    c.dev->write(m.get(), 0, v.data(), v.size() * sizeof(float));
    up.count(t->n_bytes());
    return m;
  };
  if (ls_.bo) {
    // Granite's residual multiplier scales the attention output and, so, this bias.
    std::vector<float> bo = ref_.bo;
    for (float& b : bo) b *= spec_.hp.residual_scale;
    dev_.bo = upload_floats(bo, ls_.bo);
  }
  if (ls_.sinks) dev_.sinks = upload_floats(ref_.sinks, ls_.sinks);
  // The op's shape and KV format come from the cache's layout of this layer (the one place it is
  // decided).
  const kv::KvPoolLayout& pool = kv.layout(layer_);
  ops::AttentionConfig cfg;
  cfg.n_head = int32_t(spec_.hp.n_head);
  cfg.pool = pool;
  cfg.v_format = kv.layout(layer_, kv::KvPart::kV).format;
  cfg.window = int32_t(ls_.window);
  cfg.scale = spec_.hp.attention_scale;  // 0: 1 / sqrt(head_dim)
  dev_.op = &c.attention(cfg);
  // The layer reads the block tables of its window's group (blocks out of the window released).
  kv_group_ = kv.group_of(layer_);
  c.use_kv_group(kv_group_);
}

InputProjection AttentionMixer::input_projection(DeviceCtx& c) const {
  // The stacked q | k | v (| gate) matrix, with no bias after it.
  if (!dev_.wqkv.body || dev_.qkv_bias) return {};
  return {&dev_.wqkv, c.qkv.get()};
}

ops::AttentionOp::DecodeFinish AttentionMixer::decode_finish(DeviceCtx& c) const {
  const auto& hp = spec_.hp;
  const uint32_t qkv_ld = q_dim_ + 2 * kv_dim_ + gate_dim_;
  return {{c.qkv.get(), 0, qkv_ld, q_dim_, q_dim_ + kv_dim_},
          ls_.q_norm ? dev_.q_norm.get() : nullptr,
          ls_.q_norm ? dev_.k_norm.get() : nullptr,
          hp.rms_eps,
          {hp.n_rot, hp.rope_freq_base, spec_.arch->rope_mode == reference::RopeMode::kNeox,
           hp.rope_freq_scale, c.rope_freqs.get(), hp.rope_yarn}};
}

bool AttentionMixer::decode_attention(DeviceCtx& c, const LayerStep& s,
                                      ops::RouteTail::Ffn::Attention& a) const {
  // The projection it follows is input_projection's; the finish is in the decode launch's form.
  if (!s.decode || s.n_tokens != 1 || !c.finish_in_decode || !dev_.wqkv.body || dev_.qkv_bias ||
      !dev_.op->can_decode_phase())
    return false;
  a.op = dev_.op;
  a.batch = c.views[size_t(kv_group_)];
  a.layer = s.kv->layer(int32_t(layer_));
  a.out = c.att.get();
  a.out_offset = 0;
  a.workspace = c.workspace.get();
  a.workspace_bytes = c.workspace_bytes;
  a.sinks = dev_.sinks ? dev_.sinks.get() : nullptr;
  a.finish = decode_finish(c);
  return true;
}

bool AttentionMixer::forward(DeviceCtx& c, const LayerStep& s, bool prenormed) {
  const auto& hp = spec_.hp;
  const int n = s.n_tokens;
  const uint32_t E = hp.n_embd;
  if (s.projected && (!dev_.wqkv.body || dev_.qkv_bias))
    throw TesseraError("attention: a projected input without the stacked q|k|v matrix");
  if (s.attended && !s.projected)
    throw TesseraError("attention: an attended step without its projected input");
  if (!prenormed && !s.projected)
    c.norm->rms_norm(c.x.get(), 0, dev_.attn_norm.get(), 0, c.xn.get(), 0, uint32_t(n), E,
                     hp.rms_eps, {{}, c.prof("norm")});
  // Projections into one q | k | v (| gate) row per token (unless the previous layer's launch ran
  // it: s.projected), then norms, RoPE and the KV store in one launch.
  const uint32_t qkv_ld = q_dim_ + 2 * kv_dim_ + gate_dim_;
  if (s.projected) {
    // c.qkv holds the rows already.
  } else if (dev_.wqkv.body) {
    c.mm->run(dev_.wqkv, c.xn.get(), 0, c.qkv.get(), 0, n, {}, c.prof("matmul"));
  } else {
    c.mm->run(dev_.wq, c.xn.get(), 0, c.qkv.get(), 0, n, {}, c.prof("matmul"), {qkv_ld});
    c.mm->run(dev_.wk, c.xn.get(), 0, c.qkv.get(), q_dim_, n, {}, c.prof("matmul"), {qkv_ld});
    c.mm->run(dev_.wv, c.xn.get(), 0, c.qkv.get(), q_dim_ + kv_dim_, n, {}, c.prof("matmul"),
              {qkv_ld});
    if (dev_.wgate.body)
      c.mm->run(dev_.wgate, c.xn.get(), 0, c.qkv.get(), q_dim_ + 2 * kv_dim_, n, {},
                c.prof("matmul"), {qkv_ld});
  }
  if (dev_.qkv_bias)
    c.ew->add_row_bias(c.qkv.get(), 0, qkv_ld, dev_.qkv_bias.get(), 0, uint32_t(n), qkv_ld,
                       {{}, c.prof("elementwise")});
  const auto layer_view = s.kv->layer(int32_t(layer_));
  const kv::KvBatchView& view = c.views[size_t(kv_group_)];
  auto& attn = *dev_.op;
  // Norms, RoPE and the KV store: their own launch, or, in decode steps, inside the attention's.
  const ops::AttentionOp::DecodeFinish finish = decode_finish(c);
  const bool in_decode = s.decode && c.finish_in_decode;
  if (s.attended) {
    // The previous layer's launch ran the decode (decode_attention): c.att holds its output.
  } else if (!in_decode)
    attn.qkv_finish(view, layer_view, finish.src, finish.q_norm, finish.k_norm, finish.eps,
                    finish.rope, c.q.get(), 0, 0, n, {{}, c.prof("qkv_finish")});
  const cl_mem sinks = dev_.sinks ? dev_.sinks.get() : nullptr;
  if (s.attended) {
  } else if (s.decode) {
    attn.decode(view, layer_view, c.q.get(), 0, c.att.get(), 0, 0, n, c.workspace.get(),
                c.workspace_bytes, {{}, c.prof("attention")}, sinks, in_decode ? &finish : nullptr);
  } else {
    attn.prefill(view, layer_view, c.q.get(), 0, c.att.get(), 0, 0, n, {{}, c.prof("attention")},
                 sinks);
  }
  // Qwen3-Next's output gate: att *= sigmoid(gate), the gate rows after v.
  if (gate_dim_ > 0)
    c.act->sigmoid_mul({c.att.get(), 0, q_dim_}, {c.qkv.get(), q_dim_ + 2 * kv_dim_, qkv_ld},
                       {c.att.get(), 0, q_dim_}, uint32_t(n), q_dim_, {{}, c.prof("activation")});
  // Granite's residual multiplier, on the projection's input (x += s * wo(att) = wo(s * att)).
  if (hp.residual_scale != 1.0f)
    c.ew->scale(c.att.get(), 0, uint64_t(n) * q_dim_, hp.residual_scale,
                {{}, c.prof("elementwise")});
  // Output projection added to the residual stream in the same launch (then its bias, if any);
  // with s.route (offered by MoeFfn::route_tail, which checked the launch can take it; no bias
  // after it) the MoE block's norm and routing in that launch too.
  if (s.route && !dev_.bo) {
    c.mm->run_route_tail(dev_.wo, c.att.get(), 0, c.x.get(), 0, n, {0, true}, *s.route, {},
                         c.prof("matmul"));
    return true;
  }
  c.mm->run(dev_.wo, c.att.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
  if (dev_.bo)
    c.ew->add_row_bias(c.x.get(), 0, E, dev_.bo.get(), 0, uint32_t(n), E,
                       {{}, c.prof("elementwise")});
  return false;
}

void AttentionMixer::reference_forward(std::span<float> x, std::span<const int32_t> positions,
                                       ReferenceLayerMemory& mem) const {
  const auto& hp = spec_.hp;
  const size_t T = positions.size(), E = hp.n_embd, Q = q_dim_, KV = kv_dim_;
  const int n_head_kv = int(ls_.n_head_kv);
  std::vector<float> cur(T * E), q(T * Q), k(T * KV), v(T * KV), attn(T * Q), proj(T * E);
  std::vector<float> gate;
  reference::rms_norm(x, ref_.attn_norm, hp.rms_eps, cur);
  if (gate_dim_ > 0) {
    // Per head: head_dim query floats, then head_dim gate floats.
    std::vector<float> qg(T * 2 * Q);
    reference::matmul(cur, ref_.wq, qg);
    gate.resize(T * Q);
    const size_t hd = hp.head_dim;
    for (size_t t = 0; t < T; ++t)
      for (size_t h = 0; h < hp.n_head; ++h)
        for (size_t i = 0; i < hd; ++i) {
          q[t * Q + h * hd + i] = qg[t * 2 * Q + 2 * h * hd + i];
          gate[t * Q + h * hd + i] = qg[t * 2 * Q + 2 * h * hd + hd + i];
        }
  } else {
    reference::matmul(cur, ref_.wq, q);
  }
  reference::matmul(cur, ref_.wk, k);
  reference::matmul(cur, ref_.wv, v);
  if (!ref_.bq.empty()) {
    reference::add_row_bias(q, ref_.bq, Q);
    reference::add_row_bias(k, ref_.bk, KV);
    reference::add_row_bias(v, ref_.bv, KV);
  }
  if (!ref_.q_norm.empty()) reference::rms_norm(q, ref_.q_norm, hp.rms_eps, q);
  if (!ref_.k_norm.empty()) reference::rms_norm(k, ref_.k_norm, hp.rms_eps, k);
  for (size_t t = 0; t < T && hp.n_rot > 0; ++t) {  // n_rot 0: no RoPE (Granite 4.0-H)
    reference::rope(std::span<float>(q).subspan(t * Q, Q), int(hp.n_head), int(hp.head_dim),
                    int(hp.n_rot), positions[t], hp.rope_freq_base, spec_.arch->rope_mode,
                    hp.rope_freq_scale, ref_.rope_freqs, hp.rope_yarn);
    reference::rope(std::span<float>(k).subspan(t * KV, KV), n_head_kv, int(hp.head_dim),
                    int(hp.n_rot), positions[t], hp.rope_freq_base, spec_.arch->rope_mode,
                    hp.rope_freq_scale, ref_.rope_freqs, hp.rope_yarn);
  }
  mem.k.insert(mem.k.end(), k.begin(), k.end());
  mem.v.insert(mem.v.end(), v.begin(), v.end());
  const reference::AttentionShape shape{int(hp.n_head), n_head_kv, int(hp.head_dim)};
  // The reference keeps every position and masks by the window.
  const float scale =
      hp.attention_scale != 0.0f ? hp.attention_scale : 1.0f / std::sqrt(float(hp.head_dim));
  reference::causal_attention(q, mem.k, mem.v, shape, scale, attn, int(ls_.window), ref_.sinks);
  if (!gate.empty()) reference::sigmoid_mul(attn, gate, attn);
  reference::matmul(attn, ref_.wo, proj);
  if (!ref_.bo.empty()) reference::add_row_bias(proj, ref_.bo, E);
  for (size_t i = 0; i < x.size(); ++i) x[i] += hp.residual_scale * proj[i];
}

}  // namespace tessera::engine
