// Scalar residual add, scaled accumulate, row bias and per-row argmax.
#include "host/ops/reference/elementwise.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace tessera::reference {

void add(std::span<const float> a, std::span<const float> b, std::span<float> out) {
  if (a.size() != b.size() || out.size() != a.size()) {
    throw std::invalid_argument("add: a has " + std::to_string(a.size()) + " floats, b " +
                                std::to_string(b.size()) + ", out " + std::to_string(out.size()));
  }
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] + b[i];
}

void scale(std::span<float> x, float s) {
  for (float& v : x) v *= s;
}

void scaled_add(std::span<float> y, std::span<const float> x, std::span<const float> w,
                size_t cols) {
  if (cols == 0 || x.size() != y.size() || x.size() != w.size() * cols) {
    throw std::invalid_argument("scaled_add: y has " + std::to_string(y.size()) + " floats, x " +
                                std::to_string(x.size()) + ", w " + std::to_string(w.size()) +
                                " for rows of " + std::to_string(cols));
  }
  for (size_t r = 0; r < w.size(); ++r) {
    for (size_t c = 0; c < cols; ++c) y[r * cols + c] += w[r] * x[r * cols + c];
  }
}

void add_row_bias(std::span<float> y, std::span<const float> b, size_t ld) {
  if (ld == 0 || b.size() > ld || y.size() % ld != 0) {
    throw std::invalid_argument("add_row_bias: " + std::to_string(y.size()) +
                                " floats in rows of " + std::to_string(ld) + ", bias of " +
                                std::to_string(b.size()));
  }
  for (size_t r = 0; r < y.size(); r += ld)
    for (size_t c = 0; c < b.size(); ++c) y[r + c] += b[c];
}

void add_pair_bias(std::span<float> y, std::span<const int32_t> ids, std::span<const float> b,
                   size_t cols, size_t ld) {
  if (ld == 0 || cols == 0 || cols > ld || y.size() != ids.size() * ld || b.size() % cols != 0)
    throw std::invalid_argument(
        "add_pair_bias: " + std::to_string(y.size()) + " floats in rows of " + std::to_string(ld) +
        " for " + std::to_string(ids.size()) + " ids, biases of " + std::to_string(cols) + " in " +
        std::to_string(b.size()) + " floats");
  const size_t n_bias = b.size() / cols;
  for (size_t r = 0; r < ids.size(); ++r) {
    if (ids[r] < 0 || size_t(ids[r]) >= n_bias)
      throw std::invalid_argument("add_pair_bias: id " + std::to_string(ids[r]) + " of row " +
                                  std::to_string(r) + " outside " + std::to_string(n_bias) +
                                  " biases");
    for (size_t c = 0; c < cols; ++c) y[r * ld + c] += b[size_t(ids[r]) * cols + c];
  }
}

std::vector<int32_t> argmax_rows(std::span<const float> x, size_t cols) {
  if (cols == 0 || x.size() % cols != 0) {
    throw std::invalid_argument("argmax_rows: " + std::to_string(x.size()) +
                                " floats are not whole rows of " + std::to_string(cols));
  }
  std::vector<int32_t> ids;
  for (size_t r = 0; r < x.size(); r += cols) {
    float best = -std::numeric_limits<float>::infinity();
    size_t best_i = cols;
    for (size_t i = 0; i < cols; ++i) {
      const float v = x[r + i];
      if (v > best || (v == best && best_i == cols)) {
        best = v;
        best_i = i;
      }
    }
    ids.push_back(best_i < cols ? int32_t(best_i) : 0);
  }
  return ids;
}

}  // namespace tessera::reference
