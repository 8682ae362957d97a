// Hand-computed cases for the recurrent mixers' reference ops (short conv, Mamba2 scan, gated
// RMSNorm, Gated DeltaNet), and the agreements the device forms rely on: a chunk split anywhere
// (prefill then decode) equals the whole chunk, and the chunked forms (Mamba2's SSD scan,
// DeltaNet's triangular solve) equal their recurrences.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "host/ops/reference/activation.h"
#include "host/ops/reference/deltanet.h"
#include "host/ops/reference/ssm.h"

namespace tessera::reference {
namespace {

std::vector<float> randoms(size_t n, uint32_t seed, float lo = -1, float hi = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(Softplus, MatchesGgml) {
  EXPECT_NEAR(softplus(0.0f), std::log(2.0f), 1e-7f);
  EXPECT_NEAR(softplus(-3.0f), std::log1p(std::exp(-3.0f)), 1e-7f);
  EXPECT_EQ(softplus(25.0f), 25.0f);  // passes through above 20
}

TEST(Conv1dSilu, HandComputedWithStateAndBias) {
  // 2 channels, d_conv 3: state holds 2 past inputs per channel.
  const std::vector<float> w{1, 2, 3, 0.5f, 0, -1}, bias{0.1f, 0};
  std::vector<float> state{1, 2, -1, 1};
  const std::vector<float> x{3, 2, 4, 5};  // token 0: (3, 2), token 1: (4, 5)
  std::vector<float> out(4);
  conv1d_silu({x, 2}, 2, 2, w, 3, bias, state, {out, 2});
  // channel 0 windows: (1, 2, 3) and (2, 3, 4); channel 1: (-1, 1, 2) and (1, 2, 5)
  EXPECT_NEAR(out[0], silu(0.1f + 1 + 4 + 9), 1e-5f);
  EXPECT_NEAR(out[2], silu(0.1f + 2 + 6 + 12), 1e-5f);
  EXPECT_NEAR(out[1], silu(-0.5f + 0 - 2), 1e-6f);
  EXPECT_NEAR(out[3], silu(0.5f + 0 - 5), 1e-6f);
  EXPECT_EQ(state, (std::vector<float>{3, 4, 2, 5}));
}

TEST(Conv1dSilu, ChunkShorterThanStateKeepsOlderInputs) {
  const std::vector<float> w(4, 1.0f);  // 1 channel, d_conv 4: 3 past inputs
  std::vector<float> state{1, 2, 3}, out(1);
  const std::vector<float> x{4};
  conv1d_silu({x, 1}, 1, 1, w, 4, {}, state, {out, 1});
  EXPECT_NEAR(out[0], silu(10.0f), 1e-5f);
  EXPECT_EQ(state, (std::vector<float>{2, 3, 4}));
}

TEST(Conv1dSilu, SplitChunksEqualWholeChunk) {
  const uint32_t channels = 5, d_conv = 4, n = 9;
  const auto w = randoms(channels * d_conv, 1), bias = randoms(channels, 2);
  const auto x = randoms(n * 7, 3);  // stride 7 > channels
  std::vector<float> s_whole = randoms(channels * (d_conv - 1), 4), s_split = s_whole;
  std::vector<float> whole(n * channels), split(n * channels);
  conv1d_silu({x, 7}, n, channels, w, d_conv, bias, s_whole, {whole, channels});
  uint32_t t = 0;
  for (uint32_t len : {1u, 3u, 1u, 4u}) {  // prefill pieces, then one-token decodes
    conv1d_silu({std::span<const float>(x).subspan(t * 7), 7}, len, channels, w, d_conv, bias,
                s_split, {std::span<float>(split).subspan(t * channels), channels});
    t += len;
  }
  ASSERT_EQ(t, n);
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_FLOAT_EQ(split[i], whole[i]) << i;
  EXPECT_EQ(s_split, s_whole);
}

TEST(Conv1dSilu, BadSizesNameTheArgument) {
  std::vector<float> x(4), w(5), state(2), out(4);
  try {
    conv1d_silu({x, 2}, 2, 2, w, 3, {}, state, {out, 2});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("w holds 5"), std::string::npos) << e.what();
  }
}

TEST(Mamba2Scan, HandComputedTwoTokens) {
  // One head of one channel, one group, d_state 2.
  const Mamba2Shape s{1, 1, 1, 2};
  const std::vector<float> x{2, -1}, dt{0, 1}, b{1, 2, 0.5f, 0}, c{1, 1, 2, 3};
  const std::vector<float> a{-0.5f}, d{0.25f}, dt_bias{0.5f};
  std::vector<float> state{1, -1}, y(2);
  mamba2_scan(s, 2, {x, 1}, {dt, 1}, {b, 2}, {c, 2}, a, d, dt_bias, state, {y, 1});
  float s0 = 1, s1 = -1;
  float sp = softplus(0.5f), da = std::exp(sp * -0.5f);
  s0 = s0 * da + 1 * 2 * sp;
  s1 = s1 * da + 2 * 2 * sp;
  EXPECT_NEAR(y[0], s0 * 1 + s1 * 1 + 0.25f * 2, 1e-5f);
  sp = softplus(1.5f);
  da = std::exp(sp * -0.5f);
  s0 = s0 * da + 0.5f * -1 * sp;
  s1 = s1 * da + 0 * -1 * sp;
  EXPECT_NEAR(y[1], s0 * 2 + s1 * 3 + 0.25f * -1, 1e-5f);
  EXPECT_NEAR(state[0], s0, 1e-5f);
  EXPECT_NEAR(state[1], s1, 1e-5f);
}

TEST(Mamba2Scan, HeadsReadTheirGroupsBandC) {
  // 4 heads in 2 groups: heads 2 and 3 read group 1, whose B is zero, so their state stays zero
  // and y is the D skip alone; heads 0 and 1 do not.
  const Mamba2Shape s{4, 2, 2, 3};
  const auto x = randoms(8, 5), dt = randoms(4, 6), c = randoms(6, 7);
  std::vector<float> b = randoms(6, 8);
  for (int n = 3; n < 6; ++n) b[n] = 0;
  const std::vector<float> a(4, -1.0f), d{1, 2, 3, 4}, dt_bias(4, 0.0f);
  std::vector<float> state(8 * 3, 0.0f), y(8);
  mamba2_scan(s, 1, {x, 8}, {dt, 4}, {b, 6}, {c, 6}, a, d, dt_bias, state, {y, 8});
  for (int r = 4; r < 8; ++r) EXPECT_FLOAT_EQ(y[r], d[r / 2] * x[r]) << r;
  for (int r = 0; r < 4; ++r) EXPECT_NE(y[r], d[r / 2] * x[r]) << r;
}

TEST(Mamba2Scan, SplitChunksEqualWholeChunk) {
  const Mamba2Shape s{4, 3, 2, 5};
  const uint32_t n = 7, xs = 12 + 1, bs = 10 + 2;
  const auto x = randoms(n * xs, 9), dt = randoms(n * 4, 10, -2, 2), b = randoms(n * bs, 11),
             c = randoms(n * bs, 12), a = randoms(4, 13, -2, -0.1f), d = randoms(4, 14),
             dt_bias = randoms(4, 15);
  std::vector<float> st_whole = randoms(12 * 5, 16), st_split = st_whole;
  std::vector<float> whole(n * 12), split(n * 12);
  mamba2_scan(s, n, {x, xs}, {dt, 4}, {b, bs}, {c, bs}, a, d, dt_bias, st_whole, {whole, 12});
  uint32_t t = 0;
  for (uint32_t len : {4u, 1u, 1u, 1u}) {
    auto sub = [&](const std::vector<float>& v, size_t stride) {
      return ConstRows{std::span<const float>(v).subspan(t * stride), stride};
    };
    mamba2_scan(s, len, sub(x, xs), sub(dt, 4), sub(b, bs), sub(c, bs), a, d, dt_bias, st_split,
                {std::span<float>(split).subspan(t * 12), 12});
    t += len;
  }
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_FLOAT_EQ(split[i], whole[i]) << i;
  EXPECT_EQ(st_split, st_whole);
}

// Grouped heads with a padded row stride and a state carried in; dt spans softplus's pass-through
// region (dt + bias above 20 for some tokens) and strong decays.
struct ScanData {
  Mamba2Shape s{6, 5, 3, 7};
  uint32_t n = 19, xs = 30 + 2, bs = 21 + 1, dts = 6 + 3;
  std::vector<float> x = randoms(n * xs, 30), dt = randoms(n * dts, 31, -4, 3),
                     b = randoms(n * bs, 32), c = randoms(n * bs, 33),
                     a = randoms(6, 34, -3, -0.05f), d = randoms(6, 35), dt_bias = randoms(6, 36),
                     state0 = randoms(30 * 7, 37);
  ScanData() { dt[5 * dts + 2] = 25.0f; }
  ConstRows rows(const std::vector<float>& v, uint32_t stride, uint32_t t) const {
    return {std::span<const float>(v).subspan(t * stride), stride};
  }
};

TEST(Mamba2Scan, ChunkedEqualsRecurrence) {
  const ScanData sd;
  std::vector<float> st_rec = sd.state0, y_rec(sd.n * 30);
  mamba2_scan(sd.s, sd.n, sd.rows(sd.x, sd.xs, 0), sd.rows(sd.dt, sd.dts, 0),
              sd.rows(sd.b, sd.bs, 0), sd.rows(sd.c, sd.bs, 0), sd.a, sd.d, sd.dt_bias, st_rec,
              {y_rec, 30});
  for (uint32_t chunk : {1u, 3u, 4u, 8u, 19u, 64u}) {
    std::vector<float> st = sd.state0, y(sd.n * 30);
    mamba2_scan_chunked(sd.s, sd.n, chunk, sd.rows(sd.x, sd.xs, 0), sd.rows(sd.dt, sd.dts, 0),
                        sd.rows(sd.b, sd.bs, 0), sd.rows(sd.c, sd.bs, 0), sd.a, sd.d, sd.dt_bias,
                        st, {y, 30});
    for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], y_rec[i], 2e-5f) << chunk << " " << i;
    for (size_t i = 0; i < st.size(); ++i)
      EXPECT_NEAR(st[i], st_rec[i], 2e-5f) << chunk << " " << i;
  }
}

TEST(Mamba2Scan, ChunkedPrefillThenDecodeEqualsTokenByToken) {
  const ScanData sd;
  std::vector<float> st_tok = sd.state0, y_tok(sd.n * 30);
  for (uint32_t t = 0; t < sd.n; ++t)
    mamba2_scan(sd.s, 1, sd.rows(sd.x, sd.xs, t), sd.rows(sd.dt, sd.dts, t),
                sd.rows(sd.b, sd.bs, t), sd.rows(sd.c, sd.bs, t), sd.a, sd.d, sd.dt_bias, st_tok,
                {std::span<float>(y_tok).subspan(t * 30), 30});
  std::vector<float> st = sd.state0, y(sd.n * 30);
  const uint32_t prefill = 13;
  mamba2_scan_chunked(sd.s, prefill, 4, sd.rows(sd.x, sd.xs, 0), sd.rows(sd.dt, sd.dts, 0),
                      sd.rows(sd.b, sd.bs, 0), sd.rows(sd.c, sd.bs, 0), sd.a, sd.d, sd.dt_bias, st,
                      {y, 30});
  for (uint32_t t = prefill; t < sd.n; ++t)
    mamba2_scan(sd.s, 1, sd.rows(sd.x, sd.xs, t), sd.rows(sd.dt, sd.dts, t),
                sd.rows(sd.b, sd.bs, t), sd.rows(sd.c, sd.bs, t), sd.a, sd.d, sd.dt_bias, st,
                {std::span<float>(y).subspan(t * 30), 30});
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], y_tok[i], 2e-5f) << i;
  for (size_t i = 0; i < st.size(); ++i) EXPECT_NEAR(st[i], st_tok[i], 2e-5f) << i;
}

TEST(Mamba2Scan, ChunkedRefusesChunkZeroAndBadSizes) {
  const ScanData sd;
  std::vector<float> st = sd.state0, y(sd.n * 30);
  auto run = [&](uint32_t chunk, std::span<float> state) {
    mamba2_scan_chunked(sd.s, sd.n, chunk, sd.rows(sd.x, sd.xs, 0), sd.rows(sd.dt, sd.dts, 0),
                        sd.rows(sd.b, sd.bs, 0), sd.rows(sd.c, sd.bs, 0), sd.a, sd.d, sd.dt_bias,
                        state, {y, 30});
  };
  EXPECT_THROW(run(0, st), std::invalid_argument);
  try {
    run(4, std::span<float>(st).first(st.size() - 1));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("state holds"), std::string::npos) << e.what();
  }
}

TEST(GatedRmsNorm, GateFirstNormsTheGatedGroup) {
  const std::vector<float> y{1, 2, 3, 4}, z{0, 1, 2, -1}, w{1, 2, 3, 4};
  std::vector<float> out(4);
  gated_rms_norm({y, 4}, {z, 4}, 1, 4, 2, w, 0.0f, true, {out, 4});
  for (int g = 0; g < 2; ++g) {
    const float v0 = y[2 * g] * silu(z[2 * g]), v1 = y[2 * g + 1] * silu(z[2 * g + 1]);
    const float rms = std::sqrt((v0 * v0 + v1 * v1) / 2);
    EXPECT_NEAR(out[2 * g], v0 / rms * w[2 * g], 1e-5f);
    EXPECT_NEAR(out[2 * g + 1], v1 / rms * w[2 * g + 1], 1e-5f);
  }
}

TEST(GatedRmsNorm, GateAfterWithSharedWeightsInPlace) {
  std::vector<float> y{3, 4, 1, 0};
  const std::vector<float> z{1, -2, 0.5f, 3}, w{0.5f, 2};
  gated_rms_norm({y, 4}, {z, 4}, 1, 4, 2, w, 0.0f, false, {y, 4});
  EXPECT_NEAR(y[0], 3 / std::sqrt(12.5f) * 0.5f * silu(1), 1e-5f);
  EXPECT_NEAR(y[1], 4 / std::sqrt(12.5f) * 2 * silu(-2), 1e-5f);
  EXPECT_NEAR(y[2], 1 / std::sqrt(0.5f) * 0.5f * silu(0.5f), 1e-5f);
  EXPECT_NEAR(y[3], 0.0f, 1e-7f);
  std::vector<float> bad(3);
  EXPECT_THROW(gated_rms_norm({y, 4}, {z, 4}, 1, 4, 2, bad, 0, false, {y, 4}),
               std::invalid_argument);
}

TEST(DeltaNet, HandComputedOneHead) {
  // d_k = d_v = 2, one head; first token from a zero state, second from the first's.
  const DeltaNetShape s{1, 1, 2, 2};
  const std::vector<float> q{3, 4, 0, 2}, k{1, 0, 0, 5}, v{1, 2, -1, 1}, ba{0, 0.5f, 1, -1};
  const std::vector<float> a{-0.5f}, dt_bias{0.25f};
  std::vector<float> state(4, 0.0f), o(4);
  deltanet_recurrent(s, 2, {q, 2}, {k, 2}, {v, 2}, {ba, 2}, a, dt_bias, 0.0f, state, {o, 2});
  const float r2 = 1 / std::sqrt(2.0f);
  // token 0: k^ = (1, 0), q^ = (0.6, 0.8) / sqrt 2, beta = 0.5: S = 0.5 v k^T = [[0.5, 0], [1, 0]]
  EXPECT_NEAR(o[0], 0.5f * 0.6f * r2, 1e-6f);
  EXPECT_NEAR(o[1], 1.0f * 0.6f * r2, 1e-6f);
  // token 1: decay e^{softplus(-0.75) * -0.5}, k^ = (0, 1), q^ = (0, 1) / sqrt 2, S k^ = 0
  const float decay = std::exp(softplus(-0.75f) * -0.5f), beta = sigmoid(1.0f);
  const float s00 = 0.5f * decay, s10 = 1.0f * decay;
  const float s01 = beta * -1, s11 = beta * 1;
  EXPECT_NEAR(o[2], s01 * r2, 1e-6f);
  EXPECT_NEAR(o[3], s11 * r2, 1e-6f);
  // state element (h, i, j) at j * d_v + i
  EXPECT_NEAR(state[0], s00, 1e-6f);
  EXPECT_NEAR(state[1], s10, 1e-6f);
  EXPECT_NEAR(state[2], s01, 1e-6f);
  EXPECT_NEAR(state[3], s11, 1e-6f);
}

struct DeltaData {
  DeltaNetShape s{2, 4, 8, 6};
  uint32_t n = 13, qs = 2 * 8 * 2 + 3;  // q and k side by side in one row, padded
  std::vector<float> qk = randoms(n * qs, 20), v = randoms(n * 24, 21, -2, 2),
                     ba = randoms(n * 8, 22, -3, 3), a = randoms(4, 23, -1.5f, -0.1f),
                     dt_bias = randoms(4, 24), state0 = randoms(8 * 24, 25);
  ConstRows q(uint32_t t = 0) const { return {std::span<const float>(qk).subspan(t * qs), qs}; }
  ConstRows k(uint32_t t = 0) const {
    return {std::span<const float>(qk).subspan(t * qs + 16), qs};
  }
  ConstRows vr(uint32_t t = 0) const { return {std::span<const float>(v).subspan(t * 24), 24}; }
  ConstRows bar(uint32_t t = 0) const { return {std::span<const float>(ba).subspan(t * 8), 8}; }
};

TEST(DeltaNet, ChunkedEqualsRecurrence) {
  const DeltaData dd;
  std::vector<float> st_rec = dd.state0, o_rec(dd.n * 24);
  deltanet_recurrent(dd.s, dd.n, dd.q(), dd.k(), dd.vr(), dd.bar(), dd.a, dd.dt_bias, 1e-6f, st_rec,
                     {o_rec, 24});
  for (uint32_t chunk : {1u, 4u, 5u, 13u, 64u}) {
    std::vector<float> st = dd.state0, o(dd.n * 24);
    deltanet_chunked(dd.s, dd.n, chunk, dd.q(), dd.k(), dd.vr(), dd.bar(), dd.a, dd.dt_bias, 1e-6f,
                     st, {o, 24});
    for (size_t i = 0; i < o.size(); ++i) EXPECT_NEAR(o[i], o_rec[i], 2e-5f) << chunk << " " << i;
    for (size_t i = 0; i < st.size(); ++i)
      EXPECT_NEAR(st[i], st_rec[i], 2e-5f) << chunk << " " << i;
  }
}

TEST(DeltaNet, ChunkedPrefillThenDecodeEqualsTokenByToken) {
  const DeltaData dd;
  std::vector<float> st_tok = dd.state0, o_tok(dd.n * 24);
  for (uint32_t t = 0; t < dd.n; ++t)
    deltanet_recurrent(dd.s, 1, dd.q(t), dd.k(t), dd.vr(t), dd.bar(t), dd.a, dd.dt_bias, 1e-6f,
                       st_tok, {std::span<float>(o_tok).subspan(t * 24), 24});
  std::vector<float> st = dd.state0, o(dd.n * 24);
  const uint32_t prefill = 9;
  deltanet_chunked(dd.s, prefill, 4, dd.q(), dd.k(), dd.vr(), dd.bar(), dd.a, dd.dt_bias, 1e-6f, st,
                   {o, 24});
  for (uint32_t t = prefill; t < dd.n; ++t)
    deltanet_recurrent(dd.s, 1, dd.q(t), dd.k(t), dd.vr(t), dd.bar(t), dd.a, dd.dt_bias, 1e-6f, st,
                       {std::span<float>(o).subspan(t * 24), 24});
  for (size_t i = 0; i < o.size(); ++i) EXPECT_NEAR(o[i], o_tok[i], 2e-5f) << i;
  for (size_t i = 0; i < st.size(); ++i) EXPECT_NEAR(st[i], st_tok[i], 2e-5f) << i;
}

TEST(DeltaNet, BadShapeIsRefused) {
  const DeltaData dd;
  DeltaNetShape bad = dd.s;
  bad.n_k_head = 3;  // does not divide 4 value heads
  std::vector<float> st = dd.state0, o(dd.n * 24);
  EXPECT_THROW(deltanet_recurrent(bad, dd.n, dd.q(), dd.k(), dd.vr(), dd.bar(), dd.a, dd.dt_bias,
                                  1e-6f, st, {o, 24}),
               std::invalid_argument);
}

}  // namespace
}  // namespace tessera::reference
