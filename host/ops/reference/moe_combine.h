// Scalar reference of the MoE combine: each token's expert outputs, weighted, summed.
#pragma once

#include <cstdint>
#include <span>

namespace tessera::reference {

// out[t][i] (+)= sum_{p in [offsets[t], offsets[t+1])} weights[p] * y[row(p)][i], row(p) = rows[p]
// when rows is non-empty, else p. out holds (offsets.size() - 1) rows of n floats.
void moe_combine(std::span<float> out, std::span<const float> y, std::span<const float> weights,
                 std::span<const int32_t> offsets, std::span<const int32_t> rows, uint32_t n,
                 bool accumulate);

// A gated shared expert's output added to the residual stream (qwen2moe): for each token t,
// x[t] += sigmoid(xn[t] . gate) * s[t]; x, s and xn hold the same rows of n = gate.size() floats.
// Throws std::invalid_argument on mismatched sizes.
void shared_gate_add(std::span<float> x, std::span<const float> s, std::span<const float> xn,
                     std::span<const float> gate);

}  // namespace tessera::reference
