// Hand-computed cases for MoE routing: softmax/sigmoid gates, top-k order, normalization, scale.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "host/ops/reference/routing.h"

namespace tessera::reference {
namespace {

// logits whose softmax is (1, 3, 2, 4) / 10
std::vector<float> logits_1324() {
  return {0.0f, std::log(3.0f), std::log(2.0f), std::log(4.0f)};
}

TEST(Routing, SoftmaxTopKUnnormalized) {
  const auto c = route_experts(logits_1324(), {2, GatingFunc::kSoftmax, false, 1.0f});
  EXPECT_EQ(c.ids, (std::vector<int32_t>{3, 1}));
  EXPECT_NEAR(c.weights[0], 0.4f, 1e-6f);
  EXPECT_NEAR(c.weights[1], 0.3f, 1e-6f);
}

TEST(Routing, SoftmaxTopKNormalizedEqualsSoftmaxOverSelected) {
  const auto c = route_experts(logits_1324(), {2, GatingFunc::kSoftmax, true, 1.0f});
  EXPECT_EQ(c.ids, (std::vector<int32_t>{3, 1}));
  EXPECT_NEAR(c.weights[0], 4.0f / 7.0f, 1e-6f);
  EXPECT_NEAR(c.weights[1], 3.0f / 7.0f, 1e-6f);
}

TEST(Routing, SigmoidGateScaleAndTies) {
  const auto c =
      route_experts(std::vector<float>{0.0f, 2.0f, -1.0f}, {1, GatingFunc::kSigmoid, false, 2.5f});
  EXPECT_EQ(c.ids, (std::vector<int32_t>{1}));
  EXPECT_NEAR(c.weights[0], 2.5f / (1.0f + std::exp(-2.0f)), 1e-6f);
  const auto tie =
      route_experts(std::vector<float>{1.0f, 1.0f, 0.0f}, {1, GatingFunc::kSoftmax, false, 1.0f});
  EXPECT_EQ(tie.ids, (std::vector<int32_t>{0}));
}

TEST(Routing, RejectsBadK) {
  EXPECT_THROW(route_experts(logits_1324(), {0, GatingFunc::kSoftmax, true, 1.0f}),
               std::invalid_argument);
  EXPECT_THROW(route_experts(logits_1324(), {5, GatingFunc::kSoftmax, true, 1.0f}),
               std::invalid_argument);
}

}  // namespace
}  // namespace tessera::reference
