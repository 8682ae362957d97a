// Scalar reference of the element-wise and row ops: SiLU, SwiGLU (and gpt-oss's clamped form),
// softmax, sigmoid, the sigmoid gate.
#pragma once

#include <span>

namespace tessera::reference {

float silu(float x);     // x * sigmoid(x)
float sigmoid(float x);  // 1 / (1 + e^-x)

// out[i] = silu(gate[i]) * up[i] (the gated FFN's activation, ggml_swiglu_split). out may alias
// either input. Throws std::invalid_argument when the sizes differ.
void swiglu(std::span<const float> gate, std::span<const float> up, std::span<float> out);

// gpt-oss's clamped SwiGLU (ggml_swiglu_oai, alpha 1.702 and limit 7 in llama.cpp's gpt-oss graph):
// g = min(gate, limit), u = clamp(up, -limit, limit), out = g * sigmoid(alpha * g) * (u + 1).
// out may alias either input. Throws std::invalid_argument when the sizes differ.
void swiglu_oai(std::span<const float> gate, std::span<const float> up, std::span<float> out,
                float alpha, float limit);

// out[i] = x[i] * sigmoid(gate[i]) (Qwen3-Next's gated attention output). out may alias either
// input. Throws std::invalid_argument when the sizes differ.
void sigmoid_mul(std::span<const float> x, std::span<const float> gate, std::span<float> out);

// In-place softmax of one row (max subtracted first; sums in double). An empty row is left alone.
void softmax(std::span<float> x);

}  // namespace tessera::reference
