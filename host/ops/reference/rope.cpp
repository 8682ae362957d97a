// Scalar RoPE: theta per pair computed directly in double (ggml accumulates it in float; the
// difference is far below the tolerance kernels are held to).
#include "host/ops/reference/rope.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace tessera::reference {

RopeYarn rope_yarn_params(int n_rot, uint32_t n_ctx_orig, float freq_base, float factor,
                          float beta_fast, float beta_slow, float attn_factor) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("rope yarn: " + what); };
  if (n_rot <= 0 || n_rot % 2 != 0) bad("n_rot " + std::to_string(n_rot) + " must be even and > 0");
  if (n_ctx_orig == 0) bad("original context length must be > 0");
  if (!std::isfinite(freq_base) || freq_base <= 1.0f)
    bad("freq_base " + std::to_string(freq_base) + " must be finite and > 1");
  if (!std::isfinite(factor) || factor <= 0.0f)
    bad("scaling factor " + std::to_string(factor) + " must be finite and > 0");
  if (!std::isfinite(beta_fast) || !std::isfinite(beta_slow) || beta_fast <= 0.0f ||
      beta_slow <= 0.0f)
    bad("beta_fast and beta_slow must be finite and > 0");
  if (!std::isfinite(attn_factor) || attn_factor <= 0.0f)
    bad("attn_factor " + std::to_string(attn_factor) + " must be finite and > 0");
  // Float arithmetic in ggml's order, so the range and the magnitude are ggml's to the bit.
  const float pi = 3.14159265358979323846f;
  auto corr_dim = [&](float n_rotations) {
    return float(n_rot) * std::log(float(n_ctx_orig) / (n_rotations * 2.0f * pi)) /
           (2.0f * std::log(freq_base));
  };
  RopeYarn y;
  y.ext_factor = 1.0f;
  y.corr_low = std::max(0.0f, std::floor(corr_dim(beta_fast)));
  y.corr_high = std::min(float(n_rot - 1), std::ceil(corr_dim(beta_slow)));
  // llama.cpp: attn_factor = get_mscale(factor) / (1 + 0.1 ln factor) * rope attn_factor, and
  // ggml's rope_yarn multiplies it by 1 + 0.1 ln(1 / freq_scale).
  const float freq_scale = 1.0f / factor;
  const float get_mscale = factor <= 1.0f ? 1.0f : 0.1f * std::log(factor) + 1.0f;
  float cparams_attn = get_mscale * (1.0f / (1.0f + 0.1f * std::log(factor)));
  cparams_attn *= attn_factor;
  y.mscale = cparams_attn * (1.0f + 0.1f * std::log(1.0f / freq_scale));
  return y;
}

void rope(std::span<float> x, int n_head, int head_dim, int n_rot, int64_t pos, float freq_base,
          RopeMode mode, float freq_scale, std::span<const float> freq_factors,
          const RopeYarn& yarn) {
  if (n_head <= 0 || head_dim <= 0 || n_rot <= 0 || n_rot % 2 != 0 || n_rot > head_dim ||
      x.size() != size_t(n_head) * size_t(head_dim)) {
    throw std::invalid_argument("rope: bad shape: x has " + std::to_string(x.size()) +
                                " floats, n_head " + std::to_string(n_head) + ", head_dim " +
                                std::to_string(head_dim) + ", n_rot " + std::to_string(n_rot) +
                                " (n_rot must be even and <= head_dim; x must be n_head*head_dim)");
  }
  const int half = n_rot / 2;
  if (!freq_factors.empty() && freq_factors.size() != size_t(half)) {
    throw std::invalid_argument("rope: " + std::to_string(freq_factors.size()) +
                                " frequency factors for n_rot " + std::to_string(n_rot) +
                                " (need n_rot/2)");
  }
  for (int h = 0; h < n_head; ++h) {
    float* head = x.data() + size_t(h) * size_t(head_dim);
    for (int i = 0; i < half; ++i) {
      const double factor = freq_factors.empty() ? 1.0 : double(freq_factors[size_t(i)]);
      const double extrap =
          double(pos) * std::pow(double(freq_base), -2.0 * i / double(n_rot)) / factor;
      double theta = double(freq_scale) * extrap;
      const double mag = yarn.mscale;
      if (yarn.enabled()) {
        const double y = (double(i) - yarn.corr_low) /
                         std::max(0.001, double(yarn.corr_high) - double(yarn.corr_low));
        const double mix = (1.0 - std::min(1.0, std::max(0.0, y))) * yarn.ext_factor;
        theta = theta * (1.0 - mix) + extrap * mix;
      }
      const float c = float(std::cos(theta) * mag);
      const float s = float(std::sin(theta) * mag);
      const int a = mode == RopeMode::kNormal ? 2 * i : i;
      const int b = mode == RopeMode::kNormal ? 2 * i + 1 : i + half;
      const float x0 = head[a];
      const float x1 = head[b];
      head[a] = x0 * c - x1 * s;
      head[b] = x0 * s + x1 * c;
    }
  }
}

}  // namespace tessera::reference
