// Hand-computed cases for RMSNorm, RoPE (normal, NeoX, partial), SwiGLU and softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "host/ops/reference/activation.h"
#include "host/ops/reference/norm.h"
#include "host/ops/reference/rope.h"

namespace tessera::reference {
namespace {

TEST(RmsNorm, OneRowUnitWeight) {
  std::vector<float> x{1, 2, 3, 4}, w{1, 1, 1, 1}, out(4);
  rms_norm(x, w, 0.0f, out);
  const float s = 1.0f / std::sqrt(7.5f);  // mean of squares = 30/4
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(out[i], (i + 1) * s, 1e-6f);
}

TEST(RmsNorm, RowsAreIndependentAndWeighted) {
  std::vector<float> x{3, 4, 0, 0}, w{1, 0.5f}, out(4);
  rms_norm(x, w, 0.0f, out);
  const float rms = std::sqrt(12.5f);
  EXPECT_NEAR(out[0], 3 / rms, 1e-6f);
  EXPECT_NEAR(out[1], 4 / rms * 0.5f, 1e-6f);
  // second row is all zeros: eps 0 would divide by zero; with eps it stays zero
  std::vector<float> x2{0, 0}, out2(2);
  rms_norm(x2, w, 1.0f, out2);
  EXPECT_EQ(out2[0], 0.0f);
  EXPECT_EQ(out2[1], 0.0f);
}

TEST(RmsNorm, EpsEntersUnderTheRoot) {
  std::vector<float> x{2}, w{1}, out(1);
  rms_norm(x, w, 5.0f, out);  // 2 / sqrt(4 + 5)
  EXPECT_NEAR(out[0], 2.0f / 3.0f, 1e-6f);
}

TEST(RmsNorm, RejectsRaggedInput) {
  std::vector<float> x{1, 2, 3}, w{1, 1}, out(3);
  EXPECT_THROW(rms_norm(x, w, 0.0f, out), std::invalid_argument);
}

TEST(Rope, NormalPairsAdjacentDimensions) {
  std::vector<float> x{1, 0, 1, 0};
  rope(x, 1, 4, 4, 1, 10000.0f, RopeMode::kNormal);
  // pair 0: theta = 1; pair 1: theta = 10000^(-2/4) = 0.01
  EXPECT_NEAR(x[0], std::cos(1.0f), 1e-6f);
  EXPECT_NEAR(x[1], std::sin(1.0f), 1e-6f);
  EXPECT_NEAR(x[2], std::cos(0.01f), 1e-6f);
  EXPECT_NEAR(x[3], std::sin(0.01f), 1e-6f);
}

TEST(Rope, NeoxPairsHalves) {
  std::vector<float> x{1, 2, 3, 4};
  rope(x, 1, 4, 4, 2, 100.0f, RopeMode::kNeox);
  const float t0 = 2.0f, t1 = 2.0f * 0.1f;  // 100^(-2/4) = 0.1
  EXPECT_NEAR(x[0], 1 * std::cos(t0) - 3 * std::sin(t0), 1e-5f);
  EXPECT_NEAR(x[2], 1 * std::sin(t0) + 3 * std::cos(t0), 1e-5f);
  EXPECT_NEAR(x[1], 2 * std::cos(t1) - 4 * std::sin(t1), 1e-5f);
  EXPECT_NEAR(x[3], 2 * std::sin(t1) + 4 * std::cos(t1), 1e-5f);
}

TEST(Rope, PartialRotaryLeavesTailAndEachHead) {
  // two heads of 6, n_rot 4: dims 4,5 of each head pass through; theta_i uses n_rot, not head_dim
  std::vector<float> x{1, 0, 1, 0, 7, 8, 0, 1, 0, 1, 9, 10};
  rope(x, 2, 6, 4, 3, 10000.0f, RopeMode::kNormal);
  EXPECT_NEAR(x[0], std::cos(3.0f), 1e-6f);
  EXPECT_NEAR(x[1], std::sin(3.0f), 1e-6f);
  EXPECT_NEAR(x[2], std::cos(0.03f), 1e-6f);
  EXPECT_EQ(x[4], 7.0f);
  EXPECT_EQ(x[5], 8.0f);
  EXPECT_NEAR(x[6], -std::sin(3.0f), 1e-6f);  // (0,1) rotated by 3
  EXPECT_NEAR(x[7], std::cos(3.0f), 1e-6f);
  EXPECT_EQ(x[10], 9.0f);
  EXPECT_EQ(x[11], 10.0f);
}

TEST(Rope, LinearScaleAndFrequencyFactorsDivideTheta) {
  std::vector<float> x{1, 0, 1, 0};
  const std::vector<float> factors{4.0f, 0.5f};
  rope(x, 1, 4, 4, 8, 10000.0f, RopeMode::kNormal, 0.5f, factors);
  // pair 0: 0.5 * 8 * 1 / 4 = 1; pair 1: 0.5 * 8 * 0.01 / 0.5 = 0.08
  EXPECT_NEAR(x[0], std::cos(1.0f), 1e-6f);
  EXPECT_NEAR(x[1], std::sin(1.0f), 1e-6f);
  EXPECT_NEAR(x[2], std::cos(0.08f), 1e-6f);
  EXPECT_NEAR(x[3], std::sin(0.08f), 1e-6f);
  const std::vector<float> wrong{1.0f};
  EXPECT_THROW(rope(x, 1, 4, 4, 1, 10000.0f, RopeMode::kNormal, 1.0f, wrong),
               std::invalid_argument);
}

TEST(Rope, PositionZeroIsIdentityAndBadShapesThrow) {
  std::vector<float> x{1, 2, 3, 4};
  rope(x, 1, 4, 4, 0, 10000.0f, RopeMode::kNeox);
  EXPECT_EQ(x, (std::vector<float>{1, 2, 3, 4}));
  EXPECT_THROW(rope(x, 1, 4, 3, 0, 10000.0f, RopeMode::kNormal), std::invalid_argument);
  EXPECT_THROW(rope(x, 1, 4, 6, 0, 10000.0f, RopeMode::kNormal), std::invalid_argument);
  EXPECT_THROW(rope(x, 2, 4, 4, 0, 10000.0f, RopeMode::kNormal), std::invalid_argument);
}

TEST(Activation, SwigluAndSoftmax) {
  std::vector<float> gate{0, 1, -2}, up{5, 2, 3}, out(3);
  swiglu(gate, up, out);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 2.0f / (1.0f + std::exp(-1.0f)), 1e-6f);
  EXPECT_NEAR(out[2], 3.0f * -2.0f / (1.0f + std::exp(2.0f)), 1e-6f);
  std::vector<float> p{0.0f, std::log(2.0f), std::log(3.0f)};
  softmax(p);
  EXPECT_NEAR(p[0], 1.0f / 6, 1e-6f);
  EXPECT_NEAR(p[1], 2.0f / 6, 1e-6f);
  EXPECT_NEAR(p[2], 3.0f / 6, 1e-6f);
  std::vector<float> big{1000.0f, 1000.0f};  // max subtraction keeps it finite
  softmax(big);
  EXPECT_NEAR(big[0], 0.5f, 1e-6f);
  EXPECT_THROW(swiglu(gate, std::vector<float>{1.0f}, out), std::invalid_argument);
}

// gpt-oss's clamped SwiGLU: gate clamped above at the limit only, up both ways, up shifted by 1.
TEST(Activation, SigmoidMulGatesEachElement) {
  const std::vector<float> x{2, -3, 4}, gate{0, 100, -100};
  std::vector<float> out(3);
  sigmoid_mul(x, gate, out);
  EXPECT_FLOAT_EQ(out[0], 1.0f);   // sigmoid(0) = 1/2
  EXPECT_FLOAT_EQ(out[1], -3.0f);  // an open gate passes x
  EXPECT_NEAR(out[2], 0.0f, 1e-30f);
  std::vector<float> short_out(2);
  EXPECT_THROW(sigmoid_mul(x, gate, short_out), std::invalid_argument);
}

TEST(Activation, SwigluOaiClampsAndShifts) {
  const float a = 1.702f, lim = 7.0f;
  std::vector<float> gate{10.0f, -1.0f, -30.0f, 2.0f}, up{-9.0f, 0.5f, 100.0f, -1.0f}, out(4);
  swiglu_oai(gate, up, out, a, lim);
  auto glu = [a](float g) { return g / (1.0f + std::exp(-a * g)); };
  EXPECT_NEAR(out[0], glu(7.0f) * (-7.0f + 1.0f), 1e-4f);
  EXPECT_NEAR(out[1], glu(-1.0f) * 1.5f, 1e-6f);
  EXPECT_NEAR(out[2], glu(-30.0f) * 8.0f, 1e-6f);  // no lower clamp on the gate
  EXPECT_EQ(out[3], 0.0f);                         // up = -1: (u + 1) = 0
  EXPECT_THROW(swiglu_oai(gate, std::vector<float>{1.0f}, out, a, lim), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::reference
