// The reference forward pass: embedding, per layer (RMSNorm, QKV, q/k norm, RoPE, causal GQA
// attention, output projection, residual, RMSNorm, dense or MoE SwiGLU FFN, residual), final norm,
// logits.
#include "host/model/reference_model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "host/ops/reference/activation.h"
#include "host/ops/reference/attention.h"
#include "host/ops/reference/norm.h"
#include "host/ops/reference/rope.h"

namespace tessera::model {

reference::WeightMatrix as_matrix(const gguf::TensorInfo& t) {
  return reference::WeightMatrix{t.type, t.data, int64_t(t.dims[0]), int64_t(t.n_rows())};
}

reference::ExpertMatrices as_experts(const gguf::TensorInfo& t) {
  if (t.dims.size() != 3)
    throw std::invalid_argument("as_experts: tensor '" + t.name + "' is not 3-D");
  return reference::ExpertMatrices{t.type, t.data, int64_t(t.dims[0]), int64_t(t.dims[1]),
                                   int64_t(t.dims[2])};
}

std::vector<float> to_floats(const gguf::TensorInfo& t) {
  const reference::WeightMatrix m = as_matrix(t);
  std::vector<float> out(t.n_elements());
  for (int64_t r = 0; r < m.rows; ++r)
    m.dequantize_row(r, std::span<float>(out).subspan(size_t(r * m.cols), size_t(m.cols)));
  return out;
}

uint64_t reference_host_bytes(const gguf::GgufFile& file, const ModelSpec& spec,
                              uint64_t n_tokens) {
  // Saturating arithmetic: a hostile file's sizes must not wrap around into a small number.
  auto add = [](uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; };
  auto mul = [](uint64_t a, uint64_t b) { return b && a > UINT64_MAX / b ? UINT64_MAX : a * b; };
  uint64_t total = 0;
  for (const auto& t : file.tensors()) total = add(total, t.n_bytes());
  const auto& hp = spec.hp;
  const uint64_t kv_per_token = mul(uint64_t(hp.n_layer) * 2, mul(hp.kv_dim(), sizeof(float)));
  total = add(total, mul(kv_per_token, n_tokens));
  const uint64_t ff = std::max<uint64_t>(hp.n_ff, uint64_t(hp.n_ff_exp) * hp.n_expert_used);
  const uint64_t per_token = 6ull * hp.n_embd + 2ull * hp.q_dim() + 2ull * hp.kv_dim() + 3 * ff;
  total = add(total, mul(mul(per_token, n_tokens), sizeof(float)));
  total = add(total, mul(mul(n_tokens, uint64_t(hp.n_head)), sizeof(float)));  // a score row each
  return add(total, mul(hp.n_vocab, sizeof(float)));                           // logits
}

ReferenceModel::ReferenceModel(const ModelSpec& spec)
    : spec_(spec),
      token_embd_(as_matrix(*spec.token_embd)),
      output_(as_matrix(*spec.output)),
      output_norm_(to_floats(*spec.output_norm)),
      rope_freqs_(spec.rope_freqs ? to_floats(*spec.rope_freqs) : std::vector<float>{}) {
  routing_.n_expert_used = int(spec.hp.n_expert_used);
  routing_.gating = reference::GatingFunc::kSoftmax;
  routing_.normalize_topk = spec.arch->normalize_topk;
  routing_.weight_scale = spec.hp.expert_weights_scale;
  for (const LayerSpec& ls : spec.layers) {
    Layer l;
    l.attn_norm = to_floats(*ls.attn_norm);
    l.ffn_norm = to_floats(*ls.ffn_norm);
    if (ls.q_norm) l.q_norm = to_floats(*ls.q_norm);
    if (ls.k_norm) l.k_norm = to_floats(*ls.k_norm);
    l.wq = as_matrix(*ls.wq);
    l.wk = as_matrix(*ls.wk);
    l.wv = as_matrix(*ls.wv);
    l.wo = as_matrix(*ls.wo);
    if (ls.is_moe()) {
      l.moe =
          reference::MoeWeights{as_matrix(*ls.router), as_experts(*ls.gate_exps),
                                as_experts(*ls.up_exps), as_experts(*ls.down_exps), std::nullopt};
    } else {
      l.ffn_gate = as_matrix(*ls.ffn_gate);
      l.ffn_up = as_matrix(*ls.ffn_up);
      l.ffn_down = as_matrix(*ls.ffn_down);
    }
    layers_.push_back(std::move(l));
  }
}

std::vector<float> ReferenceModel::forward(std::span<const int32_t> tokens,
                                           std::span<const int32_t> positions, KvState& kv,
                                           bool all_logits) const {
  const HParams& hp = spec_.hp;
  if (tokens.empty() || positions.size() != tokens.size()) {
    throw std::invalid_argument("forward: " + std::to_string(tokens.size()) + " tokens and " +
                                std::to_string(positions.size()) + " positions (need >= 1, equal)");
  }
  if (kv.k.size() != hp.n_layer || kv.v.size() != hp.n_layer) {
    throw std::invalid_argument("forward: KV state has " + std::to_string(kv.k.size()) +
                                " layers, the model " + std::to_string(hp.n_layer));
  }
  const size_t T = tokens.size(), E = hp.n_embd, Q = hp.q_dim(), KV = hp.kv_dim();
  const reference::AttentionShape shape{int(hp.n_head), int(hp.n_head_kv), int(hp.head_dim)};
  const float scale = 1.0f / std::sqrt(float(hp.head_dim));

  std::vector<float> x(T * E), cur(T * E), q(T * Q), k(T * KV), v(T * KV), attn(T * Q), proj(T * E);
  reference::embedding(token_embd_, tokens, x);

  for (size_t il = 0; il < layers_.size(); ++il) {
    const Layer& l = layers_[il];
    reference::rms_norm(x, l.attn_norm, hp.rms_eps, cur);
    reference::matmul(cur, l.wq, q);
    reference::matmul(cur, l.wk, k);
    reference::matmul(cur, l.wv, v);
    if (!l.q_norm.empty()) reference::rms_norm(q, l.q_norm, hp.rms_eps, q);
    if (!l.k_norm.empty()) reference::rms_norm(k, l.k_norm, hp.rms_eps, k);
    for (size_t t = 0; t < T; ++t) {
      reference::rope(std::span<float>(q).subspan(t * Q, Q), int(hp.n_head), int(hp.head_dim),
                      int(hp.n_rot), positions[t], hp.rope_freq_base, spec_.arch->rope_mode,
                      hp.rope_freq_scale, rope_freqs_);
      reference::rope(std::span<float>(k).subspan(t * KV, KV), int(hp.n_head_kv), int(hp.head_dim),
                      int(hp.n_rot), positions[t], hp.rope_freq_base, spec_.arch->rope_mode,
                      hp.rope_freq_scale, rope_freqs_);
    }
    kv.k[il].insert(kv.k[il].end(), k.begin(), k.end());
    kv.v[il].insert(kv.v[il].end(), v.begin(), v.end());
    reference::causal_attention(q, kv.k[il], kv.v[il], shape, scale, attn);
    reference::matmul(attn, l.wo, proj);
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];

    reference::rms_norm(x, l.ffn_norm, hp.rms_eps, cur);
    if (l.moe) {
      reference::moe_ffn(cur, *l.moe, routing_, proj);
    } else {
      reference::ffn_swiglu(cur, l.ffn_gate, l.ffn_up, l.ffn_down, proj);
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
  }
  kv.n_past += int64_t(T);

  // Only the rows whose logits are wanted go through the output norm and projection.
  const size_t first = all_logits ? 0 : T - 1;
  const auto rows = std::span<const float>(x).subspan(first * E);
  std::vector<float> normed(rows.size());
  reference::rms_norm(rows, output_norm_, hp.rms_eps, normed);
  std::vector<float> logits(rows.size() / E * hp.n_vocab);
  reference::matmul(normed, output_, logits);
  return logits;
}

}  // namespace tessera::model
