// Hand-computed cases for matmul / embedding over quantized weights and the dense / MoE FFN blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "host/ops/quant/quant.h"
#include "host/ops/reference/activation.h"
#include "host/ops/reference/elementwise.h"
#include "host/ops/reference/ffn.h"
#include "host/ops/reference/matmul.h"

namespace tessera::reference {
namespace {

using gguf::TensorType;

WeightMatrix f32_matrix(const std::vector<float>& data, int64_t rows, int64_t cols) {
  return WeightMatrix{TensorType::F32, reinterpret_cast<const uint8_t*>(data.data()), cols, rows};
}

TEST(Matmul, F32BatchHandComputed) {
  const std::vector<float> w{1, 2, 3, 4, 5, 6};   // rows (1,2,3), (4,5,6)
  const std::vector<float> x{1, 0, -1, 2, 1, 0};  // two tokens
  std::vector<float> out(4);
  matmul(x, f32_matrix(w, 2, 3), out);
  EXPECT_EQ(out, (std::vector<float>{-2, -2, 4, 13}));
  std::vector<float> wrong(3);
  EXPECT_THROW(matmul(x, f32_matrix(w, 2, 3), wrong), std::invalid_argument);
}

TEST(Matmul, QuantizedRowsAreDequantizedThenDotted) {
  // Q8_0 rows of 32: value i/4 - 4 round-trip within half a step of the block scale (max 4 / 127)
  constexpr int kCols = 32;
  std::vector<float> row(kCols), x(kCols, 1.0f);
  for (int i = 0; i < kCols; ++i) row[i] = i / 4.0f - 4.0f;
  std::vector<uint8_t> q(gguf::row_bytes(TensorType::Q8_0, kCols));
  quant::quantize_row(TensorType::Q8_0, row.data(), q.data(), kCols);
  const WeightMatrix w{TensorType::Q8_0, q.data(), kCols, 1};
  float out = 0;
  matmul(x, w, std::span<float>(&out, 1));
  float expected = 0;
  for (float v : row) expected += v;  // -4
  EXPECT_NEAR(out, expected, kCols * 0.5f * 4.0f / 127.0f);
  std::vector<float> deq(kCols);
  w.dequantize_row(0, deq);
  float exact = 0;
  for (float v : deq) exact += v;
  EXPECT_NEAR(out, exact, 1e-5f);  // the matmul is exactly the dot with the dequantized row
}

TEST(Embedding, RowsByIdAndRangeChecked) {
  const std::vector<float> table{0, 1, 10, 11, 20, 21};  // 3 rows of 2
  const WeightMatrix t = f32_matrix(table, 3, 2);
  const std::vector<int32_t> ids{2, 0};
  std::vector<float> out(4);
  embedding(t, ids, out);
  EXPECT_EQ(out, (std::vector<float>{20, 21, 0, 1}));
  const std::vector<int32_t> bad{3};
  std::vector<float> one(2);
  EXPECT_THROW(embedding(t, bad, one), std::out_of_range);
}

TEST(Ffn, SwigluChainsGateUpDown) {
  // n_embd 2, n_ff 2: gate = I, up = 2I, down = [[1,1],[0,1]]
  const std::vector<float> gate{1, 0, 0, 1}, up{2, 0, 0, 2}, down{1, 1, 0, 1};
  const std::vector<float> x{1, -1};
  std::vector<float> out(2);
  ffn_swiglu(x, f32_matrix(gate, 2, 2), f32_matrix(up, 2, 2), f32_matrix(down, 2, 2), out);
  const float h0 = silu(1.0f) * 2.0f, h1 = silu(-1.0f) * -2.0f;
  EXPECT_NEAR(out[0], h0 + h1, 1e-6f);
  EXPECT_NEAR(out[1], h1, 1e-6f);
}

TEST(Moe, RoutedExpertsWeightedAndSharedExpertGated) {
  // n_embd 2, 3 experts of n_ff 1. Router rows pick expert 2 then 0 for x = (1, 0).
  const std::vector<float> router{1, 0, -1, 0, 3, 0};
  // expert e: gate row (1, 0), up row (e+1, 0), down column (1, -e): out = silu(x0)*(e+1)*x0*(1,-e)
  std::vector<float> gate, up, down;
  for (int e = 0; e < 3; ++e) {
    gate.insert(gate.end(), {1, 0});
    up.insert(up.end(), {float(e + 1), 0});
    down.insert(down.end(), {1, float(-e)});
  }
  auto stack = [](const std::vector<float>& d, int64_t rows, int64_t cols) {
    return ExpertMatrices{TensorType::F32, reinterpret_cast<const uint8_t*>(d.data()), cols, rows,
                          3};
  };
  MoeWeights w{f32_matrix(router, 3, 2), stack(gate, 1, 2), stack(up, 1, 2), stack(down, 2, 1),
               std::nullopt};
  const std::vector<float> x{1, 0};
  std::vector<float> out(2);
  std::vector<ExpertChoice> choices;
  moe_ffn(x, w, {2, GatingFunc::kSoftmax, true, 1.0f}, out, &choices);
  ASSERT_EQ(choices.size(), 1u);
  EXPECT_EQ(choices[0].ids, (std::vector<int32_t>{2, 0}));
  // normalized softmax over the selected logits (3, 1)
  const float w2 = 1.0f / (1.0f + std::exp(-2.0f)), w0 = 1.0f - w2;
  const float s = silu(1.0f);
  EXPECT_NEAR(out[0], w2 * s * 3 + w0 * s * 1, 1e-5f);
  EXPECT_NEAR(out[1], w2 * s * 3 * -2, 1e-5f);

  // shared expert: gate (0,1)->(x1), up (1,0), down (2): silu(x1)*x0*2 per dim... use x = (1, 0.5)
  const std::vector<float> sg{0, 1}, su{1, 0}, sd{2, 2}, sgate{4, 0};
  w.shared = SharedExpert{f32_matrix(sg, 1, 2), f32_matrix(su, 1, 2), f32_matrix(sd, 2, 1),
                          f32_matrix(sgate, 1, 2)};
  const std::vector<float> x2{1, 0.5f};
  std::vector<float> with_shared(2), routed_only(2);
  moe_ffn(x2, w, {2, GatingFunc::kSoftmax, true, 1.0f}, with_shared);
  MoeWeights no_shared = w;
  no_shared.shared.reset();
  moe_ffn(x2, no_shared, {2, GatingFunc::kSoftmax, true, 1.0f}, routed_only);
  const float shared_out = silu(0.5f) * 1.0f * 2.0f * sigmoid(4.0f);
  EXPECT_NEAR(with_shared[0] - routed_only[0], shared_out, 1e-5f);
  EXPECT_NEAR(with_shared[1] - routed_only[1], shared_out, 1e-5f);
  // without the sigmoid gate the shared expert is added unscaled
  w.shared->gate_inp.reset();
  moe_ffn(x2, w, {2, GatingFunc::kSoftmax, true, 1.0f}, with_shared);
  EXPECT_NEAR(with_shared[0] - routed_only[0], silu(0.5f) * 2.0f, 1e-5f);
}

// Per-expert biases on pair rows: row r gets expert ids[r]'s bias in its first `cols` floats.
TEST(Ffn, PairBiasAddsEachRowsExpertBias) {
  std::vector<float> y{1, 1, 1, 2, 2, 2};      // two pair rows of ld 3
  const std::vector<float> b{10, 20, 30, 40};  // two experts, cols 2
  add_pair_bias(y, std::vector<int32_t>{1, 0}, b, 2, 3);
  EXPECT_EQ(y, (std::vector<float>{31, 41, 1, 12, 22, 2}));
  EXPECT_THROW(add_pair_bias(y, std::vector<int32_t>{2, 0}, b, 2, 3), std::invalid_argument);
  EXPECT_THROW(add_pair_bias(y, std::vector<int32_t>{0}, b, 2, 3), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::reference
