// Hand-computed cases for grouped-query causal attention.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "host/ops/reference/attention.h"

namespace tessera::reference {
namespace {

TEST(Attention, SingleQuerySeesWholeHistory) {
  // one head, head_dim 2; q = (1,0); keys (1,0),(0,1): scores 1, 0
  std::vector<float> q{1, 0}, k{1, 0, 0, 1}, v{1, 2, 3, 4}, out(2);
  causal_attention(q, k, v, {1, 1, 2}, 1.0f, out);
  const float p0 = std::exp(1.0f) / (std::exp(1.0f) + 1.0f), p1 = 1.0f - p0;
  EXPECT_NEAR(out[0], p0 * 1 + p1 * 3, 1e-6f);
  EXPECT_NEAR(out[1], p0 * 2 + p1 * 4, 1e-6f);
}

TEST(Attention, SinkJoinsTheDenominatorOnly) {
  // As above, with a sink logit z = 1 for the head: weights e^1, e^0 over e^1 + e^0 + e^1, summing
  // to less than 1; a sink far below the scores changes nothing.
  std::vector<float> q{1, 0}, k{1, 0, 0, 1}, v{1, 2, 3, 4}, out(2);
  const std::vector<float> sink{1.0f};
  causal_attention(q, k, v, {1, 1, 2}, 1.0f, out, 0, sink);
  const float den = 2 * std::exp(1.0f) + 1.0f, p0 = std::exp(1.0f) / den, p1 = 1.0f / den;
  EXPECT_NEAR(out[0], p0 * 1 + p1 * 3, 1e-6f);
  EXPECT_NEAR(out[1], p0 * 2 + p1 * 4, 1e-6f);
  std::vector<float> plain(2);
  causal_attention(q, k, v, {1, 1, 2}, 1.0f, plain);
  causal_attention(q, k, v, {1, 1, 2}, 1.0f, out, 0, std::vector<float>{-200.0f});
  EXPECT_NEAR(out[0], plain[0], 1e-6f);
  // A sink far above the scores takes (nearly) all the weight: the output goes to 0.
  causal_attention(q, k, v, {1, 1, 2}, 1.0f, out, 0, std::vector<float>{60.0f});
  EXPECT_NEAR(out[0], 0.0f, 1e-6f);
  EXPECT_THROW(causal_attention(q, k, v, {1, 1, 2}, 1.0f, out, 0, std::vector<float>{1, 2}),
               std::invalid_argument);
}

TEST(Attention, CausalMaskWithinBatchAndScale) {
  // two query tokens, the whole history is the batch: token 0 sees only row 0
  std::vector<float> q{1, 0, 0, 2}, k{1, 0, 0, 1}, v{1, 2, 3, 4}, out(4);
  causal_attention(q, k, v, {1, 1, 2}, 0.5f, out);
  EXPECT_NEAR(out[0], 1.0f, 1e-6f);
  EXPECT_NEAR(out[1], 2.0f, 1e-6f);
  // token 1: scores (0, 2) * 0.5 = (0, 1)
  const float p1 = std::exp(1.0f) / (1.0f + std::exp(1.0f)), p0 = 1.0f - p1;
  EXPECT_NEAR(out[2], p0 * 1 + p1 * 3, 1e-6f);
  EXPECT_NEAR(out[3], p0 * 2 + p1 * 4, 1e-6f);
}

TEST(Attention, GroupedQueryHeadsShareKvHead) {
  // 4 query heads, 2 kv heads, head_dim 1, two kv rows; heads 0,1 read kv head 0; 2,3 kv head 1
  std::vector<float> q{1, -1, 0, 0};
  std::vector<float> k{1, 5, 0, 5};    // row0: kvh0=1, kvh1=5; row1: kvh0=0, kvh1=5
  std::vector<float> v{10, 1, 20, 3};  // row0: kvh0=10, kvh1=1; row1: kvh0=20, kvh1=3
  std::vector<float> out(4);
  causal_attention(q, k, v, {4, 2, 1}, 1.0f, out);
  const float a = std::exp(1.0f) / (std::exp(1.0f) + 1.0f);    // head 0: scores (1, 0)
  const float b = std::exp(-1.0f) / (std::exp(-1.0f) + 1.0f);  // head 1: scores (-1, 0)
  EXPECT_NEAR(out[0], a * 10 + (1 - a) * 20, 1e-5f);
  EXPECT_NEAR(out[1], b * 10 + (1 - b) * 20, 1e-5f);
  EXPECT_NEAR(out[2], 2.0f, 1e-6f);  // equal scores: mean of 1 and 3
  EXPECT_NEAR(out[3], 2.0f, 1e-6f);
}

TEST(Attention, SlidingWindowHidesKeysOutsideIt) {
  // one head, head_dim 1, three kv rows, all three tokens in the batch, window 2: token 0 sees row
  // 0; token 1 rows 0-1; token 2 rows 1-2 only (p - p0 >= 2 is hidden, as llama.cpp masks).
  std::vector<float> q{1, 1, 1}, k{0, 1, 2}, v{100, 10, 1}, out(3), full(3);
  causal_attention(q, k, v, {1, 1, 1}, 1.0f, out, 2);
  causal_attention(q, k, v, {1, 1, 1}, 1.0f, full);
  EXPECT_NEAR(out[0], 100.0f, 1e-4f);
  const float a = 1.0f / (1.0f + std::exp(1.0f));  // token 1: scores (0, 1)
  EXPECT_NEAR(out[1], a * 100 + (1 - a) * 10, 1e-4f);
  EXPECT_NEAR(full[1], out[1], 1e-6f);             // inside the window: the same as without one
  const float b = 1.0f / (1.0f + std::exp(1.0f));  // token 2: scores (1, 2) over rows 1-2
  EXPECT_NEAR(out[2], b * 10 + (1 - b) * 1, 1e-4f);
  EXPECT_GT(full[2], out[2] + 1.0f);  // row 0 (value 100) weighs in without the window
  // A window of 1 sees only the token itself; one at or past the context is no window.
  causal_attention(q, k, v, {1, 1, 1}, 1.0f, out, 1);
  EXPECT_NEAR(out[2], 1.0f, 1e-6f);
  causal_attention(q, k, v, {1, 1, 1}, 1.0f, out, 3);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(out[i], full[i], 1e-6f);
  EXPECT_THROW(causal_attention(q, k, v, {1, 1, 1}, 1.0f, out, -1), std::invalid_argument);
}

TEST(Attention, RejectsBadShapes) {
  std::vector<float> q{1, 0, 0, 1}, k{1, 0}, v{1, 0}, out(4);
  EXPECT_THROW(causal_attention(q, k, v, {1, 1, 2}, 1.0f, out),
               std::invalid_argument);  // n_kv < n_tokens
  EXPECT_THROW(causal_attention(q, k, v, {3, 2, 1}, 1.0f, out), std::invalid_argument);  // 3 % 2
}

}  // namespace
}  // namespace tessera::reference
