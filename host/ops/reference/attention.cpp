// Scalar grouped-query causal attention: materializes each score row, softmaxes it, sums values.
#include "host/ops/reference/attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "host/ops/reference/activation.h"

namespace tessera::reference {

void causal_attention(std::span<const float> q, std::span<const float> k, std::span<const float> v,
                      const AttentionShape& shape, float scale, std::span<float> out, int window,
                      std::span<const float> sinks) {
  if (window < 0)
    throw std::invalid_argument("causal_attention: window " + std::to_string(window) +
                                " must be >= 0 (0: no window)");
  const auto [n_head, n_head_kv, head_dim] = shape;
  if (n_head <= 0 || n_head_kv <= 0 || head_dim <= 0 || n_head % n_head_kv != 0) {
    throw std::invalid_argument("causal_attention: bad heads: n_head " + std::to_string(n_head) +
                                ", n_head_kv " + std::to_string(n_head_kv) + ", head_dim " +
                                std::to_string(head_dim));
  }
  if (!sinks.empty() && sinks.size() != size_t(n_head))
    throw std::invalid_argument("causal_attention: " + std::to_string(sinks.size()) +
                                " sinks for " + std::to_string(n_head) + " heads");
  const size_t q_row = size_t(n_head) * size_t(head_dim);
  const size_t kv_row = size_t(n_head_kv) * size_t(head_dim);
  if (q.size() % q_row != 0 || k.size() % kv_row != 0 || v.size() != k.size() ||
      out.size() != q.size() || k.size() / kv_row < q.size() / q_row) {
    throw std::invalid_argument(
        "causal_attention: sizes q " + std::to_string(q.size()) + ", k " +
        std::to_string(k.size()) + ", v " + std::to_string(v.size()) + ", out " +
        std::to_string(out.size()) +
        " do not form [n_tokens][n_head][head_dim] / [n_kv>=n_tokens][n_head_kv][head_dim]");
  }
  const size_t n_tokens = q.size() / q_row;
  const size_t n_kv = k.size() / kv_row;
  const size_t n_past = n_kv - n_tokens;
  const int group = n_head / n_head_kv;
  std::vector<float> scores;
  for (size_t t = 0; t < n_tokens; ++t) {
    const size_t pos = n_past + t;
    const size_t first = window > 0 && pos + 1 > size_t(window) ? pos + 1 - size_t(window) : 0;
    const size_t visible = pos + 1 - first;
    scores.resize(visible);
    for (int h = 0; h < n_head; ++h) {
      const float* qh = q.data() + t * q_row + size_t(h) * head_dim;
      const size_t kv_head_offset = size_t(h / group) * head_dim;
      for (size_t j = 0; j < visible; ++j) {
        const float* kj = k.data() + (first + j) * kv_row + kv_head_offset;
        float dot = 0.0f;
        for (int d = 0; d < head_dim; ++d) dot += qh[d] * kj[d];
        scores[j] = dot * scale;
      }
      if (sinks.empty()) {
        softmax(scores);
      } else {
        const float sink = sinks[size_t(h)];
        float mx = sink;
        for (float sc : scores) mx = std::max(mx, sc);
        double sum = std::exp(double(sink) - mx);  // in double, as softmax()
        for (float& sc : scores) {
          sc = std::exp(sc - mx);
          sum += sc;
        }
        for (float& sc : scores) sc = float(sc / sum);
      }
      float* oh = out.data() + t * q_row + size_t(h) * head_dim;
      for (int d = 0; d < head_dim; ++d) oh[d] = 0.0f;
      for (size_t j = 0; j < visible; ++j) {
        const float* vj = v.data() + (first + j) * kv_row + kv_head_offset;
        for (int d = 0; d < head_dim; ++d) oh[d] += scores[j] * vj[d];
      }
    }
  }
}

}  // namespace tessera::reference
