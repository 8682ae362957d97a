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

// YaRN (ggml's rope_yarn, llama.cpp's defaults): pair i's angle blends the interpolated angle
// (freq_scale * theta) and the extrapolated one (theta) by ramp_i * ext_factor, where ramp_i falls
// from 1 at pair corr_low to 0 at corr_high. cos and sin are multiplied by mscale whether the blend
// is on or not (as ggml's attn_factor). ext_factor 0 (the default) leaves plain RoPE's angle;
// mscale 1 leaves the magnitude.
struct RopeYarn {
  float ext_factor = 0.0f;
  float corr_low = 0.0f, corr_high = 0.0f;  // pair indices, as ggml_rope_yarn_corr_dims
  float mscale = 1.0f;
  bool enabled() const { return ext_factor != 0.0f; }
};

// The YaRN parameters llama.cpp derives for `rope.scaling.type = yarn` with scaling factor `factor`
// (freq_scale = 1/factor): ext_factor 1, the correction range of pairs whose wavelength at
// n_ctx_orig positions lies between beta_fast and beta_slow rotations (ggml_rope_yarn_corr_dims
// with n_dims = n_rot), and mscale = attn_factor * (1 + 0.1 ln factor) for factor > 1 (1 for
// factor <= 1: llama.cpp's get_mscale and its cancelling factor). Throws std::invalid_argument
// for a factor, n_ctx_orig, base, beta or attn_factor out of range.
RopeYarn rope_yarn_params(int n_rot, uint32_t n_ctx_orig, float freq_base, float factor,
                          float beta_fast = 32.0f, float beta_slow = 1.0f,
                          float attn_factor = 1.0f);

// Rotates, in place, the heads of one token: x holds n_head rows of head_dim floats. Only the first
// n_rot dimensions of each head rotate (partial rotary when n_rot < head_dim; the rest pass
// through). For pair i in [0, n_rot/2): theta = freq_scale * pos * freq_base^(-2i/n_rot) /
// freq_factors[i], as ggml computes it (with YaRN's blend and magnitude when `yarn` is enabled):
// freq_scale is 1/rope.scaling.factor for linear scaling and YaRN, freq_factors the optional
// per-pair divisors of Llama 3's rope_freqs.weight (empty: all 1). Throws std::invalid_argument
// when n_rot is odd, exceeds head_dim, freq_factors is neither empty nor n_rot/2 long, or the sizes
// do not match.
void rope(std::span<float> x, int n_head, int head_dim, int n_rot, int64_t pos, float freq_base,
          RopeMode mode, float freq_scale = 1.0f, std::span<const float> freq_factors = {},
          const RopeYarn& yarn = {});

}  // namespace tessera::reference
