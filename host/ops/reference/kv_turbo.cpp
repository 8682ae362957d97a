// Scalar TurboQuant: rotation, codebooks, the mse row codec and the prod estimator. The encoder's
// float operations are those of cl_kernels/kv_codec_turbo.clh in the same order (sum of squares,
// butterflies, one scale per stage, squared comparisons), so a device stores the same bytes.
#include "host/ops/reference/kv_turbo.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numbers>
#include <stdexcept>
#include <string>

#include "cl_kernels/kv_turbo_tables.clh"
#include "host/common/half.h"

namespace tessera::reference::turbo {

namespace {

constexpr float kCentroids[KV_TURBO_N_CENTROIDS] = {KV_TURBO_CENTROIDS};
constexpr float kBoundsSq[KV_TURBO_N_BOUNDS_SQ] = {KV_TURBO_BOUNDS_SQ};
constexpr float kInvSqrtPow2[KV_TURBO_N_INV_SQRT_POW2] = {KV_TURBO_INV_SQRT_POW2};

// The sign hash (kv_turbo_sign in the kernels): a murmur3 finalizer of index, stage and seed.
uint32_t mix(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}
bool negative(uint32_t seed, uint32_t stage, uint32_t i) {
  return (mix(i * 0x9E3779B1u + stage * 0x7F4A7C15u + seed) >> 31) != 0;
}

void check_dim(size_t d, const char* what) {
  if (d < 8 || d % 8 != 0)
    throw std::invalid_argument(std::string(what) + ": head size " + std::to_string(d) +
                                " is not a positive multiple of 8");
}

struct Stage {
  uint32_t start, log2_p;
};
// The stages of R for d (see kv_turbo.h).
std::vector<Stage> stages(uint32_t d) {
  uint32_t k = 0;
  while ((2u << k) <= d) ++k;  // 2^k <= d < 2^(k+1)
  if ((1u << k) == d) return {{0, k}};
  return {{0, k}, {d - (1u << k), k}, {0, k}};
}

void fwht(float* x, uint32_t p) {
  for (uint32_t h = 1; h < p; h *= 2)
    for (uint32_t i = 0; i < p; i += 2 * h)
      for (uint32_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

void check_bits(uint32_t bits) {
  if (bits < 1 || bits > 4)
    throw std::invalid_argument("turbo: " + std::to_string(bits) + " bits (1..4 have codebooks)");
}

// Index of the centroid nearest y * sqrt(d) / sqrt(ss), decided without roots or divisions.
uint32_t quantize(float y, float ss, float d, uint32_t bits) {
  const uint32_t half = 1u << (bits - 1);
  const float a = (y * y) * d;
  const float* bounds = kBoundsSq + (half - bits);
  uint32_t m = 0;
  for (uint32_t k = 0; k + 1 < half; ++k)
    if (a > bounds[k] * ss) ++m;
  return y >= 0.0f ? half + m : half - 1 - m;
}

float centroid(uint32_t bits, uint32_t index) {
  return kCentroids[(1u << bits) - 2 + index];
}

float f16_at(std::span<const uint8_t> row) {
  return fp16_to_fp32(uint16_t(row[0] | (row[1] << 8)));
}

void check_row(const RowShape& s, size_t values, size_t bytes, const char* what) {
  check_dim(s.head_dim, what);
  check_bits(s.hi_bits);
  check_bits(s.lo_bits);
  if (s.qjl && (s.hi_bits != s.lo_bits || s.hi_channels != 0))
    throw std::invalid_argument(std::string(what) + ": a prod row has one code width");
  if (s.hi_channels % 8 != 0 || s.hi_channels > s.head_dim)
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(s.hi_channels) +
                                " high-width channels (a multiple of 8 up to the head size)");
  if (values != s.head_dim || bytes != row_bytes(s))
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(values) + " values and " +
                                std::to_string(bytes) + " bytes for a row of head size " +
                                std::to_string(s.head_dim) + " (" + std::to_string(row_bytes(s)) +
                                " bytes)");
}

// Byte offset of the group of 8 channels starting at channel c, and its width.
std::pair<size_t, uint32_t> group_of(const RowShape& s, uint32_t c) {
  if (c < s.hi_channels) return {2 + size_t(c / 8) * s.hi_bits, s.hi_bits};
  return {2 + size_t(s.hi_channels / 8) * s.hi_bits + size_t((c - s.hi_channels) / 8) * s.lo_bits,
          s.lo_bits};
}

// The f16 h whose rounding interval holds sqrt(a / scale), decided on squares: the largest h with
// a >= mid_sq(h - 1) * scale (midpoints of neighbouring f16 values square exactly in float),
// found from the float root's f16. The mse and prod encoders' norms and the prod residual norm.
uint16_t f16_root_of(float a, float scale) {
  auto mid_sq = [](uint16_t v) {
    const float m = (fp16_to_fp32(v) + fp16_to_fp32(uint16_t(v + 1))) * 0.5f;
    return m * m;
  };
  uint16_t h = fp32_to_fp16(std::min(std::sqrt(a / scale), 65504.0f));
  while (h > 0 && a < mid_sq(uint16_t(h - 1)) * scale) --h;
  while (h < 0x7BFF && a >= mid_sq(h) * scale) ++h;
  return h;
}

}  // namespace

uint32_t default_seed() {
  return KV_TURBO_SEED;
}

void rotate(std::span<float> x, uint32_t seed) {
  check_dim(x.size(), "turbo rotate");
  const std::vector<Stage> st = stages(uint32_t(x.size()));
  for (uint32_t s = 0; s < st.size(); ++s) {
    const uint32_t p = 1u << st[s].log2_p;
    float* w = x.data() + st[s].start;
    for (uint32_t i = 0; i < p; ++i)
      if (negative(seed, s, i)) w[i] = -w[i];
    fwht(w, p);
    for (uint32_t i = 0; i < p; ++i) w[i] *= kInvSqrtPow2[st[s].log2_p];
  }
}

void rotate_inverse(std::span<float> x, uint32_t seed) {
  check_dim(x.size(), "turbo rotate_inverse");
  const std::vector<Stage> st = stages(uint32_t(x.size()));
  for (uint32_t s = uint32_t(st.size()); s-- > 0;) {
    const uint32_t p = 1u << st[s].log2_p;
    float* w = x.data() + st[s].start;
    fwht(w, p);
    for (uint32_t i = 0; i < p; ++i) {
      w[i] *= kInvSqrtPow2[st[s].log2_p];
      if (negative(seed, s, i)) w[i] = -w[i];
    }
  }
}

std::span<const float> codebook(uint32_t bits) {
  check_bits(bits);
  return {kCentroids + (1u << bits) - 2, size_t(1) << bits};
}

uint64_t row_bytes(const RowShape& s) {
  uint64_t code_bytes =
      (uint64_t(s.hi_channels) * s.hi_bits + uint64_t(s.head_dim - s.hi_channels) * s.lo_bits) / 8;
  if (s.qjl) code_bytes += s.head_dim / 8 + 2;  // signs, f16 residual norm
  return 2 + (code_bytes + 1) / 2 * 2;
}

void encode_row(const RowShape& s, std::span<const float> x, std::span<uint8_t> row,
                uint32_t seed) {
  if (s.qjl) {
    encode_prod_row(s, x, row, seed, cache_qjl_matrix(s.head_dim));
    return;
  }
  check_row(s, x.size(), row.size(), "turbo encode_row");
  float ss = 0.0f;
  for (float v : x) ss += v * v;
  // The f16 norm: the f16 whose rounding interval holds the true root.
  const uint16_t h = f16_root_of(ss, 1.0f);
  std::fill(row.begin(), row.end(), uint8_t(0));
  row[0] = uint8_t(h & 0xFF);
  row[1] = uint8_t(h >> 8);
  std::vector<float> y(x.begin(), x.end());
  rotate(y, seed);
  const float d = float(s.head_dim);
  for (uint32_t c = 0; c < s.head_dim; c += 8) {
    const auto [at, bits] = group_of(s, c);
    uint32_t word = 0;
    for (uint32_t j = 0; j < 8; ++j) word |= quantize(y[c + j], ss, d, bits) << (j * bits);
    for (uint32_t b = 0; b < bits; ++b) row[at + b] = uint8_t(word >> (8 * b));
  }
}

void decode_row_rotated(const RowShape& s, std::span<const uint8_t> row, std::span<float> out) {
  if (s.qjl) {
    decode_prod_row_rotated(s, row, out, cache_qjl_matrix(s.head_dim));
    return;
  }
  check_row(s, out.size(), row.size(), "turbo decode_row");
  const float scale = f16_at(row) / std::sqrt(float(s.head_dim));
  for (uint32_t c = 0; c < s.head_dim; c += 8) {
    const auto [at, bits] = group_of(s, c);
    uint32_t word = 0;
    for (uint32_t b = 0; b < bits; ++b) word |= uint32_t(row[at + b]) << (8 * b);
    for (uint32_t j = 0; j < 8; ++j)
      out[c + j] = scale * centroid(bits, (word >> (j * bits)) & ((1u << bits) - 1));
  }
}

void decode_row(const RowShape& s, std::span<const uint8_t> row, std::span<float> out,
                uint32_t seed) {
  decode_row_rotated(s, row, out);
  rotate_inverse(out, seed);
}

std::vector<float> qjl_matrix(uint32_t d, uint32_t qjl_seed) {
  std::vector<float> m(size_t(d) * d);
  for (size_t i = 0; i < m.size(); ++i) {
    const uint32_t a = mix(uint32_t(2 * i) * 0x9E3779B1u + qjl_seed);
    const uint32_t b = mix(uint32_t(2 * i + 1) * 0x9E3779B1u + qjl_seed + 0x632BE5ABu);
    const double u1 = (double(a) + 0.5) / 4294967296.0, u2 = double(b) / 4294967296.0;
    m[i] = float(std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
  }
  return m;
}

uint32_t qjl_seed() {
  return KV_TURBO_QJL_SEED;
}

std::span<const float> cache_qjl_matrix(uint32_t head_dim) {
  check_dim(head_dim, "turbo cache_qjl_matrix");
  static std::mutex mu;
  static std::map<uint32_t, std::vector<float>> made;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = made.find(head_dim);
  if (it == made.end()) it = made.emplace(head_dim, qjl_matrix(head_dim, qjl_seed())).first;
  return it->second;  // map nodes stay put: the span outlives the lock
}

float sqrt_dim(uint32_t head_dim) {
  return std::sqrt(float(head_dim));
}

namespace {

void check_qjl(const RowShape& s, std::span<const float> qjl, const char* what) {
  if (!s.qjl) throw std::invalid_argument(std::string(what) + ": the shape is not a prod row's");
  if (qjl.size() != size_t(s.head_dim) * s.head_dim)
    throw std::invalid_argument(std::string(what) + ": the QJL matrix is not d x d");
}

}  // namespace

void encode_prod_row(const RowShape& s, std::span<const float> x, std::span<uint8_t> row,
                     uint32_t seed, std::span<const float> qjl) {
  check_row(s, x.size(), row.size(), "turbo encode_prod_row");
  check_qjl(s, qjl, "turbo encode_prod_row");
  const uint32_t d = s.head_dim, bits = s.lo_bits;
  float ss = 0.0f;
  for (float v : x) ss += v * v;
  const uint16_t h = f16_root_of(ss, 1.0f);
  std::fill(row.begin(), row.end(), uint8_t(0));
  row[0] = uint8_t(h & 0xFF);
  row[1] = uint8_t(h >> 8);
  const float n = fp16_to_fp32(h), dim = float(d), sd = sqrt_dim(d);
  std::vector<float> y(x.begin(), x.end());
  rotate(y, seed);
  std::vector<float> r(d);
  float rr = 0.0f;
  for (uint32_t c = 0; c < d; c += 8) {
    const auto [at, b] = group_of(s, c);
    uint32_t word = 0;
    for (uint32_t j = 0; j < 8; ++j) {
      const uint32_t k = quantize(y[c + j], ss, dim, bits);
      word |= k << (j * bits);
      r[c + j] = y[c + j] * sd - n * centroid(bits, k);
      rr += r[c + j] * r[c + j];
    }
    for (uint32_t i = 0; i < b; ++i) row[at + i] = uint8_t(word >> (8 * i));
  }
  const size_t signs_at = 2 + size_t(d) * bits / 8, gamma_at = signs_at + d / 8;
  for (uint32_t j = 0; j < d; ++j) {
    // The device's order: 8 lanes (channel i in lane i mod 8), then lanes l + 4, then pairs.
    float lane[8] = {};
    for (uint32_t i = 0; i < d; ++i) lane[i % 8] = lane[i % 8] + qjl[size_t(j) * d + i] * r[i];
    const float t0 = lane[0] + lane[4], t1 = lane[1] + lane[5], t2 = lane[2] + lane[6],
                t3 = lane[3] + lane[7];
    const float z = (t0 + t2) + (t1 + t3);
    if (z < 0.0f) row[signs_at + j / 8] |= uint8_t(1u << (j % 8));
  }
  const uint16_t g = f16_root_of(rr, dim);
  row[gamma_at] = uint8_t(g & 0xFF);
  row[gamma_at + 1] = uint8_t(g >> 8);
}

void decode_prod_row_rotated(const RowShape& s, std::span<const uint8_t> row,
                             std::span<float> out, std::span<const float> qjl) {
  check_row(s, out.size(), row.size(), "turbo decode_prod_row");
  check_qjl(s, qjl, "turbo decode_prod_row");
  const uint32_t d = s.head_dim, bits = s.lo_bits;
  const size_t signs_at = 2 + size_t(d) * bits / 8, gamma_at = signs_at + d / 8;
  const float scale = f16_at(row) / sqrt_dim(d);
  const float qjl_scale = float(std::sqrt(std::numbers::pi / 2) / double(d)) *
                          fp16_to_fp32(uint16_t(row[gamma_at] | (row[gamma_at + 1] << 8)));
  for (uint32_t c = 0; c < d; c += 8) {
    const auto [at, b] = group_of(s, c);
    uint32_t word = 0;
    for (uint32_t i = 0; i < b; ++i) word |= uint32_t(row[at + i]) << (8 * i);
    for (uint32_t j = 0; j < 8; ++j)
      out[c + j] = scale * centroid(bits, (word >> (j * bits)) & ((1u << bits) - 1));
  }
  for (uint32_t i = 0; i < d; ++i) {
    float acc = 0.0f;
    for (uint32_t j = 0; j < d; ++j) {
      const bool neg = (row[signs_at + j / 8] >> (j % 8)) & 1u;
      acc += neg ? -qjl[size_t(j) * d + i] : qjl[size_t(j) * d + i];
    }
    out[i] += qjl_scale * acc;
  }
}

ProdCode encode_prod(std::span<const float> x, uint32_t mse_bits, uint32_t seed,
                     std::span<const float> qjl) {
  check_dim(x.size(), "turbo encode_prod");
  check_bits(mse_bits);
  const size_t d = x.size();
  if (qjl.size() != d * d)
    throw std::invalid_argument("turbo encode_prod: the QJL matrix is not d x d");
  ProdCode code;
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  code.norm = float(std::sqrt(ss));
  std::vector<float> y(x.begin(), x.end());
  if (code.norm > 0)
    for (float& v : y) v /= code.norm;
  rotate(y, seed);
  code.mse.resize(d);
  std::vector<float> r(d);
  double rr = 0;
  const float inv_sqrt_d = 1.0f / std::sqrt(float(d));
  for (size_t i = 0; i < d; ++i) {
    code.mse[i] = centroid(mse_bits, quantize(y[i], 1.0f, float(d), mse_bits)) * inv_sqrt_d;
    r[i] = y[i] - code.mse[i];
    rr += double(r[i]) * r[i];
  }
  code.residual_norm = float(std::sqrt(rr));
  code.signs.resize(d);
  for (size_t j = 0; j < d; ++j) {
    double z = 0;
    for (size_t i = 0; i < d; ++i) z += double(qjl[j * d + i]) * r[i];
    code.signs[j] = z >= 0 ? 1 : -1;
  }
  return code;
}

float estimate_inner_product_mse(const ProdCode& code, std::span<const float> q, uint32_t seed) {
  std::vector<float> rq(q.begin(), q.end());
  rotate(rq, seed);
  double dot = 0;
  for (size_t i = 0; i < rq.size(); ++i) dot += double(rq[i]) * code.mse[i];
  return float(code.norm * dot);
}

float estimate_inner_product(const ProdCode& code, std::span<const float> q, uint32_t seed,
                             std::span<const float> qjl) {
  const size_t d = q.size();
  std::vector<float> rq(q.begin(), q.end());
  rotate(rq, seed);
  double mse = 0, sketch = 0;
  for (size_t i = 0; i < d; ++i) mse += double(rq[i]) * code.mse[i];
  for (size_t j = 0; j < d; ++j) {
    double sq = 0;
    for (size_t i = 0; i < d; ++i) sq += double(qjl[j * d + i]) * rq[i];
    sketch += sq * code.signs[j];
  }
  const double qjl_scale = std::sqrt(std::numbers::pi / 2) / double(d) * code.residual_norm;
  return float(code.norm * (mse + qjl_scale * sketch));
}

}  // namespace tessera::reference::turbo
