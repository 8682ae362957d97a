// Scalar reference of the MoE combine and the gated shared-expert add (double accumulation).
#include "host/ops/reference/moe_combine.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace tessera::reference {

void moe_combine(std::span<float> out, std::span<const float> y, std::span<const float> weights,
                 std::span<const int32_t> offsets, std::span<const int32_t> rows, uint32_t n,
                 bool accumulate) {
  if (offsets.empty())
    throw std::invalid_argument("moe_combine: offsets must have n_tokens + 1 entries");
  const size_t tokens = offsets.size() - 1;
  if (out.size() < tokens * n) throw std::invalid_argument("moe_combine: out too small");
  for (size_t t = 0; t < tokens; ++t) {
    for (uint32_t i = 0; i < n; ++i) {
      double acc = 0;
      for (int32_t p = offsets[t]; p < offsets[t + 1]; ++p) {
        const size_t row = rows.empty() ? size_t(p) : size_t(rows[size_t(p)]);
        acc += double(weights[size_t(p)]) * y[row * n + i];
      }
      float& o = out[t * n + i];
      o = accumulate ? float(o + acc) : float(acc);
    }
  }
}

GroupedPairs group_pairs(std::span<const int32_t> ids, uint32_t k, uint32_t n_expert) {
  if (k == 0) throw std::invalid_argument("group_pairs: k must be >= 1");
  const size_t n = ids.size();
  auto bucket = [&](int32_t id) {
    return id >= 0 && uint32_t(id) < n_expert ? uint32_t(id) : n_expert;
  };
  GroupedPairs g;
  g.token.reserve(n);
  g.expert.reserve(n);
  g.row.assign(n, -1);
  for (uint32_t e = 0; e <= n_expert; ++e)
    for (size_t p = 0; p < n; ++p)
      if (bucket(ids[p]) == e) {
        g.row[p] = int32_t(g.token.size());
        g.token.push_back(int32_t(p / k));
        g.expert.push_back(ids[p]);
      }
  return g;
}

void shared_gate_add(std::span<float> x, std::span<const float> s, std::span<const float> xn,
                     std::span<const float> gate) {
  const size_t n = gate.size();
  if (n == 0 || x.size() % n != 0 || s.size() != x.size() || xn.size() != x.size())
    throw std::invalid_argument("shared_gate_add: x " + std::to_string(x.size()) + ", s " +
                                std::to_string(s.size()) + ", xn " + std::to_string(xn.size()) +
                                " floats for rows of " + std::to_string(n));
  for (size_t r = 0; r < x.size(); r += n) {
    double dot = 0;
    for (size_t i = 0; i < n; ++i) dot += double(xn[r + i]) * gate[i];
    const double g = 1.0 / (1.0 + std::exp(-dot));
    for (size_t i = 0; i < n; ++i) x[r + i] = float(x[r + i] + g * s[r + i]);
  }
}

}  // namespace tessera::reference
