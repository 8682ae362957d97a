// Scalar reference of TurboQuant (Zandieh et al., "TurboQuant: Online Vector Quantization with
// Near-optimal Distortion Rate", ICLR 2026) for KV rows: the randomized Hadamard rotation, the
// Lloyd-Max codebooks (cl_kernels/kv_turbo_tables.clh), the row codec of the mse formats and the
// prod estimator ((b-1)-bit mse + a 1-bit QJL sketch of the residual: unbiased inner products).
//
// Rotation R of a head vector of d values (d a multiple of 8): a stage on a window of P = 2^k
// values multiplies them by seeded random signs (a hash of seed, stage and index), applies the
// Walsh-Hadamard transform and scales by 1 / sqrt(P), an orthogonal map. A power-of-two d is one
// stage on [0, d). Another d uses the largest power of two P < d and three stages, on [0, P), on
// [d - P, d) and on [0, P) again: the windows overlap (P > d / 2), so after the second stage the
// coordinates of [d - P, d) and after the third those of [0, P) mix every input; a product of
// orthogonal maps is orthogonal. R^T runs the stages backwards.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace tessera::reference::turbo {

// The seed of the cache's rotation (KV_TURBO_SEED).
uint32_t default_seed();

// x <- R x and x <- R^T x for d = x.size() (a multiple of 8, >= 8; std::invalid_argument else).
void rotate(std::span<float> x, uint32_t seed);
void rotate_inverse(std::span<float> x, uint32_t seed);

// The 2^bits Lloyd-Max centroids of N(0, 1), ascending (bits 1..4).
std::span<const float> codebook(uint32_t bits);

// What one mse row holds: rotated channels [0, hi_channels) at hi_bits, the rest at lo_bits.
struct RowShape {
  uint32_t head_dim = 0;
  uint32_t hi_bits = 0;
  uint32_t lo_bits = 0;
  uint32_t hi_channels = 0;
};
// Row bytes: f16 norm, the channels' indices packed 8 per `bits` bytes (channel j of a group at
// bits [j * bits, (j + 1) * bits) of the little-endian word), hi channels first, padded to even.
uint64_t row_bytes(const RowShape& shape);

// Encodes x (head_dim values) into row (row_bytes): norm |x| rounded to f16 (the f16 nearest the
// true root of the float sum of squares), index of each rotated coordinate y_i = (R x)_i: the
// centroid c nearest y_i sqrt(d) / |x|, decided as y_i^2 d against squared boundaries times |x|^2.
void encode_row(const RowShape& shape, std::span<const float> x, std::span<uint8_t> row,
                uint32_t seed);
// The rotated values a row stands for: norm / sqrt(d) * c[index_i] (what attention reads).
void decode_row_rotated(const RowShape& shape, std::span<const uint8_t> row, std::span<float> out);
// The head vector: R^T of decode_row_rotated.
void decode_row(const RowShape& shape, std::span<const uint8_t> row, std::span<float> out,
                uint32_t seed);

// prod: keys for unbiased inner products. The mse part (mse_bits on every channel) quantizes
// u = x / |x|; r = R u - (its mse reconstruction) is sketched by sign(S r), S a d x d matrix of
// N(0, 1) entries drawn from qjl_seed, with |r|. <q, x> is estimated as
//   |x| (<R q, mse> + sqrt(pi / 2) / d |r| <S R q, signs>),
// unbiased over S for any rotation (E sign(<s, r>) <s, y> = sqrt(2 / pi) <r, y> / |r|).
struct ProdCode {
  float norm = 0;             // |x|
  float residual_norm = 0;    // |r|
  std::vector<float> mse;     // the mse reconstruction of R u (unit scale)
  std::vector<int8_t> signs;  // sign(S r), +-1
};
// S of a seed, row-major d x d (Box-Muller on a hash of seed and entry).
std::vector<float> qjl_matrix(uint32_t head_dim, uint32_t qjl_seed);
ProdCode encode_prod(std::span<const float> x, uint32_t mse_bits, uint32_t seed,
                     std::span<const float> qjl);
float estimate_inner_product(const ProdCode& code, std::span<const float> q, uint32_t seed,
                             std::span<const float> qjl);
// The mse estimate alone (|x| <R q, mse>): biased towards 0 by the quantizer's distortion.
float estimate_inner_product_mse(const ProdCode& code, std::span<const float> q, uint32_t seed);

}  // namespace tessera::reference::turbo
