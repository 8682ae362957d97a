// Scalar RMSNorm: accumulates the sum of squares in double so the oracle is not the noisy side.
#include "host/ops/reference/norm.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace tessera::reference {

void rms_norm(std::span<const float> x, std::span<const float> w, float eps, std::span<float> out) {
  const size_t n = w.size();
  if (n == 0 || x.size() % n != 0 || out.size() != x.size()) {
    throw std::invalid_argument("rms_norm: x has " + std::to_string(x.size()) + " floats, w has " +
                                std::to_string(n) + ", out has " + std::to_string(out.size()) +
                                " (x must be whole rows of w.size() and out the size of x)");
  }
  for (size_t row = 0; row < x.size(); row += n) {
    double sum_sq = 0.0;
    for (size_t i = 0; i < n; ++i) sum_sq += double(x[row + i]) * double(x[row + i]);
    const float scale = float(1.0 / std::sqrt(sum_sq / double(n) + double(eps)));
    for (size_t i = 0; i < n; ++i) out[row + i] = x[row + i] * scale * w[i];
  }
}

}  // namespace tessera::reference
