// Sampler: greedy argmax, seeded determinism, top-k/top-p filtering and the sampled distribution.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <stdexcept>
#include <vector>

#include "host/engine/engine_error.h"
#include "host/engine/sampler.h"

namespace tessera::engine {
namespace {

TEST(Sampler, GreedyIsArgmaxLowestIdOnTies) {
  Sampler s({});
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 3.0f, -1.0f, 3.0f}), 1);
  EXPECT_THROW(s.sample(std::vector<float>{}), EngineError);
  // NaNs are skipped, as the device's argmax_rows does (the engine samples greedy rows there); a
  // row without a number gives 0; -inf rows give their first id.
  const float nan = std::nanf("");
  EXPECT_EQ(s.sample(std::vector<float>{nan, 1.0f, nan, 2.0f}), 3);
  EXPECT_EQ(s.sample(std::vector<float>{nan, nan}), 0);
  EXPECT_EQ(s.sample(std::vector<float>{-INFINITY, -INFINITY, -INFINITY}), 0);
  EXPECT_EQ(s.sample(std::vector<float>{-0.0f, 0.0f}), 0);
}

std::vector<int32_t> draw(const SamplerConfig& c, const std::vector<float>& logits, int n) {
  Sampler s(c);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.sample(logits));
  return out;
}

TEST(Sampler, SeedReproducesAndDiffers) {
  const std::vector<float> logits{0.0f, 0.5f, 1.0f, 0.2f, 0.9f};
  const auto a = draw({1.0f, 0, 1.0f, 42}, logits, 64);
  EXPECT_EQ(a, draw({1.0f, 0, 1.0f, 42}, logits, 64));
  EXPECT_NE(a, draw({1.0f, 0, 1.0f, 43}, logits, 64));
}

TEST(Sampler, TopKAndTopPRestrictCandidates) {
  const std::vector<float> logits{0.0f, 2.0f, 1.9f, -3.0f, 1.0f};
  for (int32_t id : draw({5.0f, 2, 1.0f, 7}, logits, 300)) EXPECT_TRUE(id == 1 || id == 2) << id;
  for (int32_t id : draw({1.0f, 1, 1.0f, 7}, logits, 50)) EXPECT_EQ(id, 1);
  // probabilities at T=1: p1 ~ 0.42; top_p 0.3 keeps only the best token
  for (int32_t id : draw({1.0f, 0, 0.3f, 7}, logits, 50)) EXPECT_EQ(id, 1);
  std::set<int32_t> seen;
  for (int32_t id : draw({1.0f, 0, 0.7f, 7}, logits, 500)) seen.insert(id);
  EXPECT_EQ(seen, (std::set<int32_t>{1, 2}));  // p1 + p2 ~ 0.80 reaches 0.7; p1 alone does not
}

TEST(Sampler, FrequenciesFollowTemperatureSoftmax) {
  const std::vector<float> logits{0.0f, std::log(3.0f)};  // 1:3 at T=1, 1:9 at T=0.5
  auto share_of_one = [&](float temp) {
    int ones = 0;
    for (int32_t id : draw({temp, 0, 1.0f, 123}, logits, 8000)) ones += id;
    return ones / 8000.0;
  };
  EXPECT_NEAR(share_of_one(1.0f), 0.75, 0.02);
  EXPECT_NEAR(share_of_one(0.5f), 0.9, 0.015);
}

TEST(Sampler, RejectsBadTopP) {
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 1}), EngineError);
  EXPECT_THROW(Sampler({1.0f, 0, 1.5f, 1}), EngineError);
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 1}), EngineError);  // negative temperature
  EXPECT_THROW(Sampler({NAN, 0, 1.0f, 1}), EngineError);
  EXPECT_THROW(Sampler({0.5f, -3, 1.0f, 1}), EngineError);  // negative top_k
}

}  // namespace
}  // namespace tessera::engine
