// Scalar SiLU / SwiGLU / softmax / sigmoid.
#include "host/ops/reference/activation.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace tessera::reference {

float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}

float silu(float x) {
  return x * sigmoid(x);
}

void swiglu(std::span<const float> gate, std::span<const float> up, std::span<float> out) {
  if (gate.size() != up.size() || out.size() != gate.size()) {
    throw std::invalid_argument("swiglu: gate has " + std::to_string(gate.size()) + " floats, up " +
                                std::to_string(up.size()) + ", out " + std::to_string(out.size()));
  }
  for (size_t i = 0; i < gate.size(); ++i) out[i] = silu(gate[i]) * up[i];
}

void sigmoid_mul(std::span<const float> x, std::span<const float> gate, std::span<float> out) {
  if (gate.size() != x.size() || out.size() != x.size()) {
    throw std::invalid_argument("sigmoid_mul: x has " + std::to_string(x.size()) +
                                " floats, gate " + std::to_string(gate.size()) + ", out " +
                                std::to_string(out.size()));
  }
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * sigmoid(gate[i]);
}

void swiglu_oai(std::span<const float> gate, std::span<const float> up, std::span<float> out,
                float alpha, float limit) {
  if (gate.size() != up.size() || out.size() != gate.size()) {
    throw std::invalid_argument("swiglu_oai: gate has " + std::to_string(gate.size()) +
                                " floats, up " + std::to_string(up.size()) + ", out " +
                                std::to_string(out.size()));
  }
  for (size_t i = 0; i < gate.size(); ++i) {
    const float g = std::min(gate[i], limit);
    const float u = std::clamp(up[i], -limit, limit);
    out[i] = g / (1.0f + std::exp(alpha * -g)) * (u + 1.0f);
  }
}

void softmax(std::span<float> x) {
  if (x.empty()) return;
  const float max = *std::max_element(x.begin(), x.end());
  double sum = 0.0;
  for (float& v : x) {
    v = std::exp(v - max);
    sum += v;
  }
  const float inv = float(1.0 / sum);
  for (float& v : x) v *= inv;
}

}  // namespace tessera::reference
