// Scalar reference of GELU, tanh approximation (ggml_gelu): the oracle of the device GELU kernel.
#pragma once

#include <span>

namespace tessera::reference {

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), evaluated in double.
float gelu(float x);

// out[i] = gelu(x[i]); out may alias x. Throws std::invalid_argument when the sizes differ.
void gelu(std::span<const float> x, std::span<float> out);

}  // namespace tessera::reference
