// Scalar reference of rotary position embedding (RoPE), normal and NeoX forms, with partial rotary.
#pragma once

#include <cstdint>
#include <span>

namespace tessera::reference {

// How the rotated dimensions are paired (ggml's rope modes 0 and 2).
enum class RopeMode {
  kNormal,  // pairs (x[2i], x[2i+1]) — llama
  kNeox,    // pairs (x[i], x[i + n_rot/2]) — GPT-NeoX, Qwen2/3
};

// Rotates, in place, the heads of one token: x holds n_head rows of head_dim floats. Only the first
// n_rot dimensions of each head rotate (partial rotary when n_rot < head_dim; the rest pass
// through). For pair i in [0, n_rot/2): theta = freq_scale * pos * freq_base^(-2i/n_rot) /
// freq_factors[i], as ggml computes it without YaRN (ext_factor 0): freq_scale is
// 1/rope.scaling.factor for linear scaling, freq_factors the optional per-pair divisors of Llama
// 3's rope_freqs.weight (empty: all 1). Throws std::invalid_argument when n_rot is odd, exceeds
// head_dim, freq_factors is neither empty nor n_rot/2 long, or the sizes do not match.
void rope(std::span<float> x, int n_head, int head_dim, int n_rot, int64_t pos, float freq_base,
          RopeMode mode, float freq_scale = 1.0f, std::span<const float> freq_factors = {});

}  // namespace tessera::reference
