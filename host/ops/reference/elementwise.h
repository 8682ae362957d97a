// Scalar reference of the element-wise ops: residual add, scaled accumulate (MoE combine), argmax.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessera::reference {

// out[i] = a[i] + b[i]; out may alias a or b. Throws std::invalid_argument on size mismatch.
void add(std::span<const float> a, std::span<const float> b, std::span<float> out);

// x[i] *= s (Granite's embedding and residual multipliers).
void scale(std::span<float> x, float s);

// y[r][c] += w[r] * x[r][c] for rows of `cols` floats (one weight per row: a token's expert
// weight). Throws std::invalid_argument when x, y and w do not describe the same rows.
void scaled_add(std::span<float> y, std::span<const float> x, std::span<const float> w,
                size_t cols);

// y[r][c] += b[c] for rows of `ld` floats (the first `b.size()` of each row): one bias per column,
// e.g. the q|k|v projection biases. Throws std::invalid_argument when y is not whole rows or b is
// wider than a row.
void add_row_bias(std::span<float> y, std::span<const float> b, size_t ld);

// y[r][c] += b[ids[r]][c] for rows of `ld` floats and biases of `cols` floats (b holds one row per
// expert): the per-expert biases of gpt-oss's expert projections, row r being a (token, expert)
// pair. Throws std::invalid_argument on sizes that do not fit or an id outside b.
void add_pair_bias(std::span<float> y, std::span<const int32_t> ids, std::span<const float> b,
                   size_t cols, size_t ld);

// Index of the largest element of each row of `cols` floats: ties to the lowest index, NaNs
// skipped, a row without a number gives 0. Throws std::invalid_argument when x is not whole rows.
std::vector<int32_t> argmax_rows(std::span<const float> x, size_t cols);

}  // namespace tessera::reference
