// Scalar GELU (tanh form) in double: ggml's CPU path may use an fp16 table, the oracle does not.
#include "host/ops/reference/gelu.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace tessera::reference {

float gelu(float x) {
  const double v = x;
  const double k = std::sqrt(2.0 / 3.14159265358979323846);
  return float(0.5 * v * (1.0 + std::tanh(k * v * (1.0 + 0.044715 * v * v))));
}

void gelu(std::span<const float> x, std::span<float> out) {
  if (x.size() != out.size()) {
    throw std::invalid_argument("gelu: x has " + std::to_string(x.size()) + " floats, out " +
                                std::to_string(out.size()));
  }
  for (size_t i = 0; i < x.size(); ++i) out[i] = gelu(x[i]);
}

}  // namespace tessera::reference
