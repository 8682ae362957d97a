// TurboQuant's scalar pieces: the rotation is orthogonal and invertible for power-of-two and other
// head sizes; the codebooks are the Lloyd-Max fixed points (recomputed here by the Lloyd
// iteration) and the codec's distortion on random unit vectors is within 1% of the optimum for
// the exact coordinate density at d = 64 and 128; rows pack the nearest centroids; the f16 norm is
// the correctly rounded root; the prod estimator is unbiased and its variance falls with bits.
#include "host/ops/reference/kv_turbo.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numbers>
#include <random>
#include <stdexcept>

#include "cl_kernels/kv_turbo_tables.clh"
#include "host/common/half.h"

namespace tessera::reference::turbo {
namespace {

std::vector<float> random_unit(std::mt19937& rng, uint32_t d) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(d);
  double ss = 0;
  for (float& v : x) {
    v = n(rng);
    ss += double(v) * v;
  }
  for (float& v : x) v = float(v / std::sqrt(ss));
  return x;
}

TEST(KvTurbo, RotationIsOrthogonalAndInvertible) {
  for (uint32_t d : {8u, 16u, 64u, 128u, 256u, 24u, 40u, 80u, 96u, 120u}) {
    // Columns of R: the images of the unit vectors.
    std::vector<std::vector<float>> cols(d, std::vector<float>(d, 0.0f));
    for (uint32_t j = 0; j < d; ++j) {
      cols[j][j] = 1.0f;
      rotate(cols[j], default_seed());
    }
    double worst = 0;
    for (uint32_t a = 0; a < d; ++a)
      for (uint32_t b = a; b < d; ++b) {
        double dot = 0;
        for (uint32_t i = 0; i < d; ++i) dot += double(cols[a][i]) * cols[b][i];
        worst = std::max(worst, std::fabs(dot - (a == b ? 1.0 : 0.0)));
      }
    EXPECT_LT(worst, 1e-5) << "d " << d;
    // Not the identity: every input spreads over many outputs.
    uint32_t fewest = d;
    for (uint32_t j = 0; j < d; ++j) {
      uint32_t n = 0;
      for (uint32_t i = 0; i < d; ++i) n += std::fabs(cols[j][i]) > 1e-6f;
      fewest = std::min(fewest, n);
    }
    EXPECT_GE(fewest, d / 2) << "d " << d;
    std::mt19937 rng(d);
    std::uniform_real_distribution<float> u(-3.0f, 3.0f);
    std::vector<float> x(d);
    for (float& v : x) v = u(rng);
    std::vector<float> y = x;
    rotate(y, default_seed());
    rotate_inverse(y, default_seed());
    for (uint32_t i = 0; i < d; ++i) EXPECT_NEAR(y[i], x[i], 1e-5) << "d " << d << " i " << i;
  }
  // The seed picks the signs: another seed, another rotation.
  std::vector<float> a(64), b(64);
  for (size_t i = 0; i < a.size(); ++i) a[i] = b[i] = float(i % 7) - 3.0f;
  rotate(a, 1);
  rotate(b, 2);
  EXPECT_NE(a, b);
  std::vector<float> bad(12, 1.0f);
  EXPECT_THROW(rotate(bad, 1), std::invalid_argument);
}

// The Lloyd iteration on a density sampled on a grid: the centroids and their distortion. The
// cumulative mass and first moment, interpolated between grid edges, make an iteration a few
// lookups (so it runs to its fixed point) with boundaries that move continuously.
struct Lloyd {
  std::vector<double> centroids;
  double distortion = 0;
};
Lloyd lloyd(const std::function<double(double)>& density, double lo, double hi, uint32_t bits) {
  const size_t n = 200000;
  const double step = (hi - lo) / double(n);
  std::vector<double> m0(n + 1, 0.0), m1(n + 1, 0.0), m2(n + 1, 0.0);  // over [lo, lo + i step)
  for (size_t i = 0; i < n; ++i) {
    const double t = lo + (double(i) + 0.5) * step, w = density(t) * step;
    m0[i + 1] = m0[i] + w;
    m1[i + 1] = m1[i] + w * t;
    m2[i + 1] = m2[i] + w * t * t;
  }
  auto at = [&](const std::vector<double>& m, double x) {
    const double u = std::clamp((x - lo) / step, 0.0, double(n));
    const size_t i = std::min(size_t(u), n - 1);
    return m[i] + (u - double(i)) * (m[i + 1] - m[i]);
  };
  const size_t k = size_t(1) << bits;
  auto edge = [&](const std::vector<double>& c, size_t j) {  // lower edge of cell j
    return j == 0 ? lo : (j == k ? hi : 0.5 * (c[j - 1] + c[j]));
  };
  Lloyd r;
  r.centroids.resize(k);
  for (size_t j = 0; j < k; ++j) r.centroids[j] = -2.0 + 4.0 * (double(j) + 0.5) / double(k);
  for (int it = 0; it < 200000; ++it) {
    std::vector<double> c(k);
    double moved = 0;
    for (size_t j = 0; j < k; ++j) {
      const double a = edge(r.centroids, j), b = edge(r.centroids, j + 1);
      c[j] = (at(m1, b) - at(m1, a)) / (at(m0, b) - at(m0, a));
      moved = std::max(moved, std::fabs(c[j] - r.centroids[j]));
    }
    r.centroids = c;
    if (moved < 1e-12) break;
  }
  for (size_t j = 0; j < k; ++j) {  // sum over cells of the second moment about the centroid
    const double a = edge(r.centroids, j), b = edge(r.centroids, j + 1), c = r.centroids[j];
    r.distortion +=
        (at(m2, b) - at(m2, a)) - 2 * c * (at(m1, b) - at(m1, a)) + c * c * (at(m0, b) - at(m0, a));
  }
  r.distortion /= m0[n];
  return r;
}

double gaussian(double t) {
  return std::exp(-0.5 * t * t);
}

TEST(KvTurbo, CodebooksAreTheLloydMaxQuantizersOfTheGaussian) {
  // The classic Lloyd-Max distortions of N(0, 1) (Max 1960), the paper's 0.36, 0.117, 0.03, 0.009.
  const double classic[4] = {0.3634, 0.1175, 0.03455, 0.009497};
  const float bounds[] = {KV_TURBO_BOUNDS_SQ};
  for (uint32_t bits = 1; bits <= 4; ++bits) {
    const Lloyd l = lloyd(gaussian, -9.0, 9.0, bits);
    const std::span<const float> cb = codebook(bits);
    ASSERT_EQ(cb.size(), l.centroids.size());
    for (size_t j = 0; j < cb.size(); ++j)
      EXPECT_NEAR(cb[j], l.centroids[j], 2e-4) << bits << " bits, centroid " << j;
    EXPECT_NEAR(l.distortion, classic[bits - 1], 0.01 * classic[bits - 1]) << bits << " bits";
    // The squared boundaries are the squared midpoints of neighbouring positive centroids.
    const size_t half = cb.size() / 2;
    for (size_t k = 0; k + 1 < half; ++k) {
      const double m = 0.5 * (double(cb[half + k]) + cb[half + k + 1]);
      EXPECT_NEAR(bounds[half - bits + k], m * m, 1e-6 * m * m) << bits << " bits, bound " << k;
    }
  }
}

// Mean |x - decode(encode(x))|^2 over random unit vectors.
double measured_distortion(const RowShape& s, int n_vectors, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> row(row_bytes(s));
  std::vector<float> back(s.head_dim);
  double total = 0;
  for (int v = 0; v < n_vectors; ++v) {
    const std::vector<float> x = random_unit(rng, s.head_dim);
    encode_row(s, x, row, default_seed());
    decode_row(s, row, back, default_seed());
    for (uint32_t i = 0; i < s.head_dim; ++i) total += double(x[i] - back[i]) * (x[i] - back[i]);
  }
  return total / n_vectors;
}

TEST(KvTurbo, DistortionIsWithinOnePercentOfTheOptimum) {
  for (uint32_t d : {64u, 128u}) {
    // sqrt(d) times one coordinate of a uniform unit vector: density (1 - t^2 / d)^((d - 3) / 2).
    const double sd = std::sqrt(double(d));
    auto beta = [d](double t) {
      const double u = 1.0 - t * t / d;
      return u > 0 ? std::pow(u, (double(d) - 3.0) / 2.0) : 0.0;
    };
    for (uint32_t bits = 1; bits <= 4; ++bits) {
      const double optimum = lloyd(beta, -std::min(sd, 9.0), std::min(sd, 9.0), bits).distortion;
      const double got = measured_distortion({d, bits, bits, 0}, 524288 / int(d), 7 + bits);
      EXPECT_NEAR(got, optimum, 0.01 * optimum) << "d " << d << ", " << bits << " bits";
    }
  }
  // A split row: the quarter at the higher width, the rest at the lower.
  const double d3 = measured_distortion({128, 3, 3, 0}, 4096, 3),
               d4 = measured_distortion({128, 4, 4, 0}, 4096, 4),
               split = measured_distortion({128, 4, 3, 32}, 4096, 5);
  EXPECT_NEAR(split, 0.25 * d4 + 0.75 * d3, 0.01 * split);
  // Other head sizes rotate with three stages; random unit vectors still meet the optimum's 1%.
  const double g3 = lloyd(gaussian, -9.0, 9.0, 3).distortion;
  EXPECT_NEAR(measured_distortion({96, 3, 3, 0}, 4096, 6), g3, 0.02 * g3);
}

TEST(KvTurbo, RowsPackTheNearestCentroidsAndTheNorm) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n(0.0f, 2.0f);
  for (const RowShape& s :
       {RowShape{64, 3, 3, 0}, RowShape{64, 2, 2, 0}, RowShape{64, 4, 4, 0}, RowShape{96, 3, 2, 24},
        RowShape{128, 4, 3, 32}, RowShape{32, 1, 1, 0}}) {
    std::vector<float> x(s.head_dim);
    for (float& v : x) v = n(rng);
    std::vector<uint8_t> row(row_bytes(s));
    encode_row(s, x, row, default_seed());
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    const uint16_t h = uint16_t(row[0] | (row[1] << 8));
    EXPECT_EQ(h, fp32_to_fp16(float(std::sqrt(ss))));  // the correctly rounded norm
    std::vector<float> y = x, got(s.head_dim);
    rotate(y, default_seed());
    decode_row_rotated(s, row, got);
    const float scale = fp16_to_fp32(h) / std::sqrt(float(s.head_dim));
    for (uint32_t i = 0; i < s.head_dim; ++i) {
      const uint32_t bits = i < s.hi_channels ? s.hi_bits : s.lo_bits;
      const std::span<const float> cb = codebook(bits);
      const double t = double(y[i]) * std::sqrt(double(s.head_dim)) / std::sqrt(ss);
      size_t best = 0;
      for (size_t j = 1; j < cb.size(); ++j)
        if (std::fabs(t - cb[j]) < std::fabs(t - cb[best])) best = j;
      EXPECT_EQ(got[i], scale * cb[best]) << "d " << s.head_dim << " channel " << i;
    }
  }
  // Row sizes: f16 norm + packed codes, padded to even; turbo3.5's shape at 128 is 54 bytes.
  EXPECT_EQ(row_bytes({128, 4, 3, 32}), 54u);
  EXPECT_EQ(row_bytes({128, 3, 3, 0}), 50u);
  EXPECT_EQ(row_bytes({32, 4, 3, 8}), 16u);  // 13 bytes of codes, padded
  // A zero vector stores norm 0 and decodes to zeros.
  std::vector<float> zero(64, 0.0f), back(64, 1.0f);
  std::vector<uint8_t> row(row_bytes({64, 3, 3, 0}));
  encode_row({64, 3, 3, 0}, zero, row, default_seed());
  decode_row({64, 3, 3, 0}, row, back, default_seed());
  for (float v : back) EXPECT_EQ(v, 0.0f);
  EXPECT_THROW(encode_row({64, 5, 5, 0}, zero, row, 1), std::invalid_argument);
  EXPECT_THROW(encode_row({64, 3, 3, 4}, zero, row, 1), std::invalid_argument);
  std::vector<uint8_t> short_row(10);
  EXPECT_THROW(encode_row({64, 3, 3, 0}, zero, short_row, 1), std::invalid_argument);
}

TEST(KvTurbo, ProdEstimatorIsUnbiasedAndItsVarianceFallsWithBits) {
  const uint32_t d = 64;
  std::mt19937 rng(3);
  const std::vector<float> x = random_unit(rng, d), perp = random_unit(rng, d);
  // q with <q, x> = 0.6 (perp made orthogonal to x first).
  double px = 0;
  for (uint32_t i = 0; i < d; ++i) px += double(perp[i]) * x[i];
  std::vector<float> q(d), o(d);
  double on = 0;
  for (uint32_t i = 0; i < d; ++i) {
    o[i] = float(perp[i] - px * x[i]);
    on += double(o[i]) * o[i];
  }
  for (uint32_t i = 0; i < d; ++i) q[i] = float(0.6 * x[i] + 0.8 * o[i] / std::sqrt(on));
  double truth = 0;
  for (uint32_t i = 0; i < d; ++i) truth += double(q[i]) * x[i];

  const int trials = 3000;
  double var[5] = {};
  for (uint32_t bits = 2; bits <= 4; ++bits) {  // (bits - 1)-bit mse + 1-bit sketch
    double sum = 0, sum2 = 0, mse_sum = 0;
    for (int t = 0; t < trials; ++t) {
      const uint32_t seed = 1000u * bits + uint32_t(t);
      const std::vector<float> s = qjl_matrix(d, seed ^ 0xA5A5A5A5u);
      const ProdCode c = encode_prod(x, bits - 1, seed, s);
      const double e = estimate_inner_product(c, q, seed, s);
      sum += e;
      sum2 += e * e;
      mse_sum += estimate_inner_product_mse(c, q, seed);
    }
    const double mean = sum / trials;
    var[bits] = sum2 / trials - mean * mean;
    const double se = std::sqrt(var[bits] / trials);
    EXPECT_LT(std::fabs(mean - truth), 4 * se + 1e-4)
        << bits << " bits: mean " << mean << " vs " << truth << " (se " << se << ")";
    // The mse estimate alone shrinks towards 0 by about its distortion: a visible bias.
    const double mse_mean = mse_sum / trials;
    EXPECT_LT(mse_mean, truth - 4 * se) << bits << " bits";
  }
  EXPECT_GT(var[2], var[3]);
  EXPECT_GT(var[3], var[4]);
}

// The prod row format (turbo3p / turbo4p keys, what the device stores): the row's decoded vector
// gives the same inner products as the ProdCode estimator up to the f16 norms, and is unbiased
// over QJL matrices with variance falling with the mse width.
TEST(KvTurbo, ProdRowsEstimateInnerProductsWithoutBias) {
  for (uint32_t d : {64u, 40u}) {  // one rotation stage, three
    std::mt19937 rng(17 + d);
    const std::vector<float> x = random_unit(rng, d), perp = random_unit(rng, d);
    std::vector<float> q(d);
    for (uint32_t i = 0; i < d; ++i) q[i] = 0.7f * x[i] + 0.7f * perp[i];
    double truth = 0;
    for (uint32_t i = 0; i < d; ++i) truth += double(q[i]) * x[i];
    std::vector<float> rq = q;
    rotate(rq, default_seed());
    const int trials = 2000;
    double var[4] = {};
    for (uint32_t bits = 2; bits <= 3; ++bits) {
      const RowShape shape{d, bits, bits, 0, true};
      std::vector<uint8_t> row(row_bytes(shape));
      std::vector<float> xt(d);
      double sum = 0, sum2 = 0;
      for (int t = 0; t < trials; ++t) {
        const std::vector<float> s = qjl_matrix(d, 77u * bits + uint32_t(t));
        encode_prod_row(shape, x, row, default_seed(), s);
        decode_prod_row_rotated(shape, row, xt, s);
        double e = 0;
        for (uint32_t i = 0; i < d; ++i) e += double(rq[i]) * xt[i];
        sum += e;
        sum2 += e * e;
        if (t == 0) {
          // The same estimate as the unrounded ProdCode estimator, up to the f16 norms.
          const ProdCode c = encode_prod(x, bits, default_seed(), s);
          const double full = estimate_inner_product(c, q, default_seed(), s);
          EXPECT_NEAR(e, full, 2e-3) << "d " << d << ", " << bits << " bits";
        }
      }
      const double mean = sum / trials;
      var[bits] = sum2 / trials - mean * mean;
      const double se = std::sqrt(var[bits] / trials);
      EXPECT_LT(std::fabs(mean - truth), 4 * se + 1e-4)
          << "d " << d << ", " << bits << " bits: mean " << mean << " vs " << truth;
    }
    EXPECT_GT(var[2], var[3]) << "d " << d;
  }
  // Row sizes: f16 norm, codes, d / 8 sign bytes, f16 residual norm, padded to even.
  EXPECT_EQ(row_bytes({128, 2, 2, 0, true}), 52u);  // turbo3p: 2 + 32 + 16 + 2
  EXPECT_EQ(row_bytes({128, 3, 3, 0, true}), 68u);  // turbo4p: 2 + 48 + 16 + 2
  EXPECT_EQ(row_bytes({8, 2, 2, 0, true}), 8u);     // 2 + 2 + 1 + 2, padded
  // A zero vector: norm and residual 0, decodes to zeros.
  const RowShape shape{64, 2, 2, 0, true};
  std::vector<float> zero(64, 0.0f), back(64, 1.0f);
  std::vector<uint8_t> row(row_bytes(shape));
  encode_row(shape, zero, row, default_seed());
  decode_row(shape, row, back, default_seed());
  for (float v : back) EXPECT_EQ(v, 0.0f);
  // A prod shape has one code width; its matrix is d x d.
  EXPECT_THROW(encode_row({64, 3, 2, 16, true}, zero, row, 1), std::invalid_argument);
  const std::vector<float> small = qjl_matrix(32, 1);
  EXPECT_THROW(encode_prod_row(shape, zero, row, 1, small), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::reference::turbo
