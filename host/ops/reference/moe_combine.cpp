// Scalar reference of the MoE combine (double accumulation).
#include "host/ops/reference/moe_combine.h"

#include <stdexcept>

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

}  // namespace tessera::reference
