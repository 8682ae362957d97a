// The reference forward pass: embedding, each layer's mixer then FFN (their reference forwards),
// final norm, logits.
#include "host/engine/reference_model.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "host/model/weights.h"
#include "host/ops/reference/elementwise.h"
#include "host/ops/reference/norm.h"

namespace tessera::engine {

uint64_t reference_host_bytes(const gguf::GgufFile& file, const model::ModelSpec& spec,
                              uint64_t n_tokens) {
  // Saturating arithmetic: a hostile file's sizes must not wrap around into a small number.
  auto add = [](uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; };
  auto mul = [](uint64_t a, uint64_t b) { return b && a > UINT64_MAX / b ? UINT64_MAX : a * b; };
  uint64_t total = 0;
  for (const auto& t : file.tensors()) total = add(total, t.n_bytes());
  const auto& hp = spec.hp;
  // hp.kv_dim() is the widest layer's: an upper bound when layers differ.
  const uint64_t kv_per_token = mul(uint64_t(hp.n_layer) * 2, mul(hp.kv_dim(), sizeof(float)));
  total = add(total, mul(kv_per_token, n_tokens));
  const uint64_t ff = std::max<uint64_t>(hp.n_ff, uint64_t(hp.n_ff_exp) * hp.n_expert_used);
  const uint64_t per_token = 6ull * hp.n_embd + 2ull * hp.q_dim() + 2ull * hp.kv_dim() + 3 * ff;
  total = add(total, mul(mul(per_token, n_tokens), sizeof(float)));
  total = add(total, mul(mul(n_tokens, uint64_t(hp.n_head)), sizeof(float)));  // a score row each
  return add(total, mul(hp.n_vocab, sizeof(float)));                           // logits
}

ReferenceModel::ReferenceModel(const model::ModelSpec& spec)
    : spec_(spec),
      token_embd_(model::as_matrix(*spec_.token_embd)),
      output_(model::as_matrix(*spec_.output)),
      output_norm_(model::to_floats(*spec_.output_norm)),
      layers_(make_layers(spec_, nullptr)) {}

std::vector<float> ReferenceModel::forward(std::span<const int32_t> tokens,
                                           std::span<const int32_t> positions, KvState& kv,
                                           bool all_logits) const {
  const model::HParams& hp = spec_.hp;
  if (tokens.empty() || positions.size() != tokens.size()) {
    throw std::invalid_argument("forward: " + std::to_string(tokens.size()) + " tokens and " +
                                std::to_string(positions.size()) + " positions (need >= 1, equal)");
  }
  if (kv.layers.size() != hp.n_layer) {
    throw std::invalid_argument("forward: KV state has " + std::to_string(kv.layers.size()) +
                                " layers, the model " + std::to_string(hp.n_layer));
  }
  const size_t T = tokens.size(), E = hp.n_embd;
  std::vector<float> x(T * E);
  reference::embedding(token_embd_, tokens, x);
  if (hp.embedding_scale != 1.0f) reference::scale(x, hp.embedding_scale);  // Granite
  for (size_t il = 0; il < layers_.size(); ++il) {
    layers_[il].mixer->reference_forward(x, positions, kv.layers[il]);
    layers_[il].ffn->reference_forward(x);
  }
  kv.n_past += int64_t(T);

  // Only the rows whose logits are wanted go through the output norm and projection.
  const size_t first = all_logits ? 0 : T - 1;
  const auto rows = std::span<const float>(x).subspan(first * E);
  std::vector<float> normed(rows.size());
  reference::rms_norm(rows, output_norm_, hp.rms_eps, normed);
  std::vector<float> logits(rows.size() / E * hp.n_vocab);
  reference::matmul(normed, output_, logits);
  if (hp.logit_scale != 1.0f) reference::scale(logits, 1.0f / hp.logit_scale);  // Granite
  return logits;
}

}  // namespace tessera::engine
