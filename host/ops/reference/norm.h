// Scalar reference of the normalization ops (RMSNorm): the oracle device kernels are checked
// against.
#pragma once

#include <span>

namespace tessera::reference {

// RMSNorm as ggml computes it: out = x / sqrt(mean(x^2) + eps) * w.
// Layout: x and out hold rows of w.size() floats each, back to back (x.size() must be a multiple of
// w.size()); each row is normalized on its own, so per-head norms (Qwen3's q_norm/k_norm over
// [n_head][head_dim]) are one call. out may alias x. Throws std::invalid_argument on size mismatch.
void rms_norm(std::span<const float> x, std::span<const float> w, float eps, std::span<float> out);

}  // namespace tessera::reference
