// Scalar reference of the MoE combine: each token's expert outputs, weighted, summed.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessera::reference {

// out[t][i] (+)= sum_{p in [offsets[t], offsets[t+1])} weights[p] * y[row(p)][i], row(p) = rows[p]
// when rows is non-empty, else p. out holds (offsets.size() - 1) rows of n floats.
void moe_combine(std::span<float> out, std::span<const float> y, std::span<const float> weights,
                 std::span<const int32_t> offsets, std::span<const int32_t> rows, uint32_t n,
                 bool accumulate);

// A step's (token, expert) pairs grouped by expert, stably: pair p is token p / k choosing ids[p];
// ids outside [0, n_expert) come last. token[q] / expert[q]: the q-th pair in that order; row[p]:
// the position of pair p. Throws std::invalid_argument when k is 0.
struct GroupedPairs {
  std::vector<int32_t> token, expert, row;
};
GroupedPairs group_pairs(std::span<const int32_t> ids, uint32_t k, uint32_t n_expert);

// A gated shared expert's output added to the residual stream (qwen2moe): for each token t,
// x[t] += sigmoid(xn[t] . gate) * s[t]; x, s and xn hold the same rows of n = gate.size() floats.
// Throws std::invalid_argument on mismatched sizes.
void shared_gate_add(std::span<float> x, std::span<const float> s, std::span<const float> xn,
                     std::span<const float> gate);

}  // namespace tessera::reference
