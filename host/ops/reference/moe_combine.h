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

}  // namespace tessera::reference
