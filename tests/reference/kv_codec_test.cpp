// The scalar KV row codecs against ggml's block semantics computed by hand: q8_0 scale amax / 127
// and rounded codes, q4_0 scale (signed max) / -8 with value j in the low nibble of byte j and
// value j + 16 in its high nibble; bad head sizes refused by name.
#include "host/ops/reference/kv_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>

#include "host/common/half.h"

namespace tessera::reference {
namespace {

using kv::KvFormat;

TEST(KvCodec, Q8_0BlockSemantics) {
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[size_t(j)] = float(j - 16) * 0.25f;  // amax 4 at j = 0
  std::vector<uint8_t> row(34);
  kv_encode_row(KvFormat::kQ8_0, x, row);
  const float d = fp16_to_fp32(uint16_t(row[0] | (row[1] << 8)));
  EXPECT_EQ(d, fp16_to_fp32(fp32_to_fp16(4.0f / 127.0f)));
  for (int j = 0; j < 32; ++j)
    EXPECT_EQ(int8_t(row[size_t(2 + j)]), int(std::round(x[size_t(j)] / (4.0f / 127.0f)))) << j;
  std::vector<float> back(32);
  kv_decode_row(KvFormat::kQ8_0, row, back);
  for (int j = 0; j < 32; ++j) EXPECT_NEAR(back[size_t(j)], x[size_t(j)], 0.6 * d) << j;
}

TEST(KvCodec, Q4_0NibbleLayout) {
  std::vector<float> x(64, 0.0f);
  x[0] = -8.0f;  // signed max: d = 1, codes n = x + 8
  x[3] = 3.0f;
  x[16 + 3] = -2.0f;
  x[32] = 2.0f;  // second block: d = 2 / -8, x = 2 -> n = 0
  x[33] = 1.0f;
  std::vector<uint8_t> row(36);
  kv_encode_row(KvFormat::kQ4_0, x, row);
  EXPECT_EQ(fp16_to_fp32(uint16_t(row[0] | (row[1] << 8))), 1.0f);
  EXPECT_EQ(row[2 + 0] & 15, 0);   // x[0] = -8
  EXPECT_EQ(row[2 + 0] >> 4, 8);   // x[16] = 0
  EXPECT_EQ(row[2 + 3] & 15, 11);  // x[3] = 3
  EXPECT_EQ(row[2 + 3] >> 4, 6);   // x[19] = -2
  EXPECT_EQ(fp16_to_fp32(uint16_t(row[18] | (row[19] << 8))), -0.25f);
  EXPECT_EQ(row[20] & 15, 0);  // x[32] = 2 = -0.25 * (0 - 8)
  EXPECT_EQ(row[21] & 15, 4);  // x[33] = 1 = -0.25 * (4 - 8)
  const std::vector<float> back = kv_round_trip(KvFormat::kQ4_0, x, 64);
  for (size_t j = 0; j < x.size(); ++j) EXPECT_EQ(back[j], x[j]) << j;  // all exact here
}

TEST(KvCodec, F16RoundsAndBadHeadSizesAreRefused) {
  const std::vector<float> x{1.0f, 1.0f / 3.0f, -2.5f, 65504.0f};
  const std::vector<float> back = kv_round_trip(KvFormat::kF16, x, 4);
  for (size_t j = 0; j < x.size(); ++j) EXPECT_EQ(back[j], fp16_to_fp32(fp32_to_fp16(x[j])));
  std::vector<float> eight(8, 1.0f);
  try {
    kv_round_trip(KvFormat::kQ8_0, eight, 8);
    FAIL() << "head size 8 accepted for q8_0";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q8_0 cannot store head size 8"), std::string::npos)
        << e.what();
  }
  std::vector<uint8_t> short_row(17);
  std::vector<float> block(32, 1.0f);
  EXPECT_THROW(kv_encode_row(KvFormat::kQ4_0, block, short_row), std::invalid_argument);
}

}  // namespace
}  // namespace tessera::reference
