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

// What one row holds: rotated channels [0, hi_channels) at hi_bits, the rest at lo_bits; with
// `qjl` (prod rows, keys: hi_bits == lo_bits, hi_channels 0) a 1-bit QJL sketch of the residual.
struct RowShape {
  uint32_t head_dim = 0;
  uint32_t hi_bits = 0;
  uint32_t lo_bits = 0;
  uint32_t hi_channels = 0;
  bool qjl = false;
};
// Row bytes: f16 norm, the channels' indices packed 8 per `bits` bytes (channel j of a group at
// bits [j * bits, (j + 1) * bits) of the little-endian word), hi channels first; prod rows then
// hold head_dim / 8 bytes of signs and an f16 residual norm; padded to even.
uint64_t row_bytes(const RowShape& shape);

// Encodes x (head_dim values) into row (row_bytes): norm |x| rounded to f16 (the f16 nearest the
// true root of the float sum of squares), index of each rotated coordinate y_i = (R x)_i: the
// centroid c nearest y_i sqrt(d) / |x|, decided as y_i^2 d against squared boundaries times |x|^2.
void encode_row(const RowShape& shape, std::span<const float> x, std::span<uint8_t> row,
                uint32_t seed);
// Prod rows (shape.qjl; the device format of host/kv/kv_format.h): as above for the codes (mse
// bits on every channel), then the residual at the row's scale, r_i = y_i sqrt(d) - n c_i (n the
// stored f16 norm, c_i the code's centroid; r = sqrt(d) rho, rho = R x - n c / sqrt(d)), its
// sketch bit j = ((S r)_j < 0) with S = qjl_matrix(d, qjl_seed()), and |rho| as the f16 nearest,
// decided on squares (r.r against squared f16 midpoints times d). Every float operation is the
// device's, in its order.
// The rotated values a row stands for: norm / sqrt(d) * c[index_i] (what attention reads); for a
// prod row the vector whose inner product with R q is the unbiased estimate,
// norm / sqrt(d) c + sqrt(pi / 2) / d |rho| S^T signs (the paper's DeQuant_prod).
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
// The seed of the cache's QJL matrix (KV_TURBO_QJL_SEED) and that matrix for head_dim, made once
// per head size and kept (the device programs are given the same floats).
uint32_t qjl_seed();
std::span<const float> cache_qjl_matrix(uint32_t head_dim);
// A prod row with an explicit matrix (d x d; encode_row / decode_row_rotated use the cache's).
void encode_prod_row(const RowShape& shape, std::span<const float> x, std::span<uint8_t> row,
                     uint32_t seed, std::span<const float> qjl);
void decode_prod_row_rotated(const RowShape& shape, std::span<const uint8_t> row,
                             std::span<float> out, std::span<const float> qjl);
// The float constant both sides use for sqrt(d) (std::sqrt of float(d), correctly rounded).
float sqrt_dim(uint32_t head_dim);
ProdCode encode_prod(std::span<const float> x, uint32_t mse_bits, uint32_t seed,
                     std::span<const float> qjl);
float estimate_inner_product(const ProdCode& code, std::span<const float> q, uint32_t seed,
                             std::span<const float> qjl);
// The mse estimate alone (|x| <R q, mse>): biased towards 0 by the quantizer's distortion.
float estimate_inner_product_mse(const ProdCode& code, std::span<const float> q, uint32_t seed);

}  // namespace tessera::reference::turbo
