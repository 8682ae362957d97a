// Scalar RoPE: theta per pair computed directly in double (ggml accumulates it in float; the
// difference is far below the tolerance kernels are held to).
#include "host/ops/reference/rope.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace tessera::reference {

void rope(std::span<float> x, int n_head, int head_dim, int n_rot, int64_t pos, float freq_base,
          RopeMode mode, float freq_scale, std::span<const float> freq_factors) {
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
      const double theta = double(freq_scale) * double(pos) *
                           std::pow(double(freq_base), -2.0 * i / double(n_rot)) / factor;
      const float c = float(std::cos(theta));
      const float s = float(std::sin(theta));
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
