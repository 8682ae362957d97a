// Quantization formats: block sizes equal ggml's; dequantization of hand-built blocks equals values
// computed here element by element from the documented layouts (bit for bit); quantize ->
// dequantize round trips stay within per-format error bounds; bad input is rejected.
#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "host/common/half.h"
#include "host/gguf/gguf.h"
#include "host/ops/quant/blocks.h"
#include "host/ops/quant/quant.h"

namespace tessera::quant {
namespace {

using gguf::TensorType;

const TensorType kAllTypes[] = {
    TensorType::F32,  TensorType::F16,  TensorType::BF16,  TensorType::Q4_0,  TensorType::Q4_1,
    TensorType::Q5_0, TensorType::Q5_1, TensorType::Q8_0,  TensorType::Q4_K,  TensorType::Q5_K,
    TensorType::Q6_K, TensorType::Q8_K, TensorType::TQ1_0, TensorType::TQ2_0, TensorType::MXFP4};

// Bit-level equality (so -0 vs +0 or any last-bit difference fails).
void expect_bits_equal(const std::vector<float>& got, const std::vector<float>& want,
                       const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
        << what << " element " << i << ": got " << got[i] << " want " << want[i];
}

std::vector<float> dequant(TensorType t, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_row(t, bytes.data(), out.data(), n);
  return out;
}

// A random finite fp16 scale of moderate size (either sign).
uint16_t random_scale(std::mt19937& rng) {
  std::uniform_real_distribution<float> u(0.001f, 2.0f);
  return fp32_to_fp16((rng() & 1 ? -1.0f : 1.0f) * u(rng));
}

void put16(std::vector<uint8_t>& b, size_t at, uint16_t v) {
  std::memcpy(b.data() + at, &v, 2);
}

TEST(QuantBlocks, SizesMatchGgml) {
  struct Want {
    TensorType t;
    uint64_t block, bytes;
  };
  const Want want[] = {
      {TensorType::Q4_0, 32, 18},   {TensorType::Q4_1, 32, 20},   {TensorType::Q5_0, 32, 22},
      {TensorType::Q5_1, 32, 24},   {TensorType::Q8_0, 32, 34},   {TensorType::Q4_K, 256, 144},
      {TensorType::Q5_K, 256, 176}, {TensorType::Q6_K, 256, 210}, {TensorType::Q8_K, 256, 292},
      {TensorType::TQ1_0, 256, 54}, {TensorType::TQ2_0, 256, 66}, {TensorType::F16, 1, 2},
      {TensorType::BF16, 1, 2},     {TensorType::F32, 1, 4},      {TensorType::MXFP4, 32, 17}};
  for (const auto& w : want) {
    const gguf::TypeTraits* tr = gguf::type_traits(w.t);
    ASSERT_NE(tr, nullptr);
    EXPECT_EQ(tr->block_size, w.block) << tr->name;
    EXPECT_EQ(tr->block_bytes, w.bytes) << tr->name;
    EXPECT_EQ(gguf::row_bytes(w.t, 4 * w.block), 4 * w.bytes) << tr->name;
  }
  EXPECT_EQ(sizeof(BlockQ4_0), 18u);
  EXPECT_EQ(sizeof(BlockQ4_1), 20u);
  EXPECT_EQ(sizeof(BlockQ5_0), 22u);
  EXPECT_EQ(sizeof(BlockQ5_1), 24u);
  EXPECT_EQ(sizeof(BlockQ8_0), 34u);
  EXPECT_EQ(sizeof(BlockQ4_K), 144u);
  EXPECT_EQ(sizeof(BlockQ5_K), 176u);
  EXPECT_EQ(sizeof(BlockQ6_K), 210u);
  EXPECT_EQ(sizeof(BlockQ8_K), 292u);
  EXPECT_EQ(sizeof(BlockTQ1_0), 54u);
  EXPECT_EQ(sizeof(BlockTQ2_0), 66u);
  EXPECT_EQ(sizeof(BlockMxfp4), 17u);
  for (TensorType t : kAllTypes) {
    EXPECT_TRUE(can_dequantize(t)) << gguf::type_name(t);
    EXPECT_TRUE(can_quantize(t)) << gguf::type_name(t);
  }
  EXPECT_FALSE(can_dequantize(TensorType::Q2_K));
  EXPECT_FALSE(can_quantize(TensorType::IQ4_NL));
}

TEST(QuantDequant, Q4_0HandWorked) {
  std::vector<uint8_t> b(18, 0x88);  // every nibble 8 -> 0
  put16(b, 0, 0x3800);               // d = 0.5
  b[2] = 0x9f;                       // element 0: nibble 15 -> 3.5; element 16: nibble 9 -> 0.5
  b[17] = 0x07;                      // element 15: 7 -> -0.5; element 31: 0 -> -4
  const auto y = dequant(TensorType::Q4_0, b, 32);
  EXPECT_EQ(y[0], 3.5f);
  EXPECT_EQ(y[16], 0.5f);
  EXPECT_EQ(y[15], -0.5f);
  EXPECT_EQ(y[31], -4.0f);
  EXPECT_EQ(y[1], 0.0f);
}

// Random blocks: the expected value of every element is computed from its own index.
TEST(QuantDequant, Q4_0AndQ4_1AndQ8_0) {
  std::mt19937 rng(1);
  for (int trial = 0; trial < 50; ++trial) {
    const int nb = 3;
    std::vector<uint8_t> q40(18 * nb), q41(20 * nb), q80(34 * nb);
    for (auto& x : q40) x = static_cast<uint8_t>(rng());
    for (auto& x : q41) x = static_cast<uint8_t>(rng());
    for (auto& x : q80) x = static_cast<uint8_t>(rng());
    std::vector<float> w40(32 * nb), w41(32 * nb), w80(32 * nb);
    for (int blk = 0; blk < nb; ++blk) {
      put16(q40, 18 * blk, random_scale(rng));
      put16(q41, 20 * blk, random_scale(rng));
      put16(q41, 20 * blk + 2, random_scale(rng));
      put16(q80, 34 * blk, random_scale(rng));
      uint16_t d40, d41, m41, d80;
      std::memcpy(&d40, &q40[18 * blk], 2);
      std::memcpy(&d41, &q41[20 * blk], 2);
      std::memcpy(&m41, &q41[20 * blk + 2], 2);
      std::memcpy(&d80, &q80[34 * blk], 2);
      for (int e = 0; e < 32; ++e) {
        const uint8_t byte40 = q40[18 * blk + 2 + e % 16];
        const int nib40 = e < 16 ? byte40 & 15 : byte40 >> 4;
        w40[32 * blk + e] = static_cast<float>(nib40 - 8) * fp16_to_fp32(d40);
        const uint8_t byte41 = q41[20 * blk + 4 + e % 16];
        const int nib41 = e < 16 ? byte41 & 15 : byte41 >> 4;
        w41[32 * blk + e] = static_cast<float>(nib41) * fp16_to_fp32(d41) + fp16_to_fp32(m41);
        w80[32 * blk + e] =
            static_cast<float>(static_cast<int8_t>(q80[34 * blk + 2 + e])) * fp16_to_fp32(d80);
      }
    }
    expect_bits_equal(dequant(TensorType::Q4_0, q40, 32 * nb), w40, "Q4_0");
    expect_bits_equal(dequant(TensorType::Q4_1, q41, 32 * nb), w41, "Q4_1");
    expect_bits_equal(dequant(TensorType::Q8_0, q80, 32 * nb), w80, "Q8_0");
  }
}

TEST(QuantDequant, Q5_0AndQ5_1) {
  std::mt19937 rng(2);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<uint8_t> q50(22), q51(24);
    for (auto& x : q50) x = static_cast<uint8_t>(rng());
    for (auto& x : q51) x = static_cast<uint8_t>(rng());
    put16(q50, 0, random_scale(rng));
    put16(q51, 0, random_scale(rng));
    put16(q51, 2, random_scale(rng));
    uint16_t d50, d51, m51;
    std::memcpy(&d50, &q50[0], 2);
    std::memcpy(&d51, &q51[0], 2);
    std::memcpy(&m51, &q51[2], 2);
    std::vector<float> w50(32), w51(32);
    for (int e = 0; e < 32; ++e) {
      // 5th bit of element e: bit e of the 4 qh bytes read as a little-endian bit string.
      const int h50 = (q50[2 + e / 8] >> (e % 8)) & 1;
      const int n50 = e < 16 ? q50[6 + e] & 15 : q50[6 + e - 16] >> 4;
      w50[e] = static_cast<float>((n50 | h50 << 4) - 16) * fp16_to_fp32(d50);
      const int h51 = (q51[4 + e / 8] >> (e % 8)) & 1;
      const int n51 = e < 16 ? q51[8 + e] & 15 : q51[8 + e - 16] >> 4;
      w51[e] = static_cast<float>(n51 | h51 << 4) * fp16_to_fp32(d51) + fp16_to_fp32(m51);
    }
    expect_bits_equal(dequant(TensorType::Q5_0, q50, 32), w50, "Q5_0");
    expect_bits_equal(dequant(TensorType::Q5_1, q51, 32), w51, "Q5_1");
  }
  // Hand-worked: d = 1, qh bit 31 set, qs[15] high nibble 0xF -> element 31 = 31 - 16 = 15.
  std::vector<uint8_t> b(22, 0);
  put16(b, 0, 0x3c00);
  b[5] = 0x80;
  b[6 + 15] = 0xf0;
  const auto y = dequant(TensorType::Q5_0, b, 32);
  EXPECT_EQ(y[31], 15.0f);
  EXPECT_EQ(y[0], -16.0f);
}

// Writes 6-bit scale/min values into the 12-byte K-quant layout, bit position by bit position:
// sub-block s < 4: scale = bits 0-5 of byte s, min = bits 0-5 of byte s+4; s >= 4: scale = low
// nibble of byte s+4 plus bits 6-7 of byte s-4 (as bits 4-5), min = high nibble of byte s+4 plus
// bits 6-7 of byte s.
std::vector<uint8_t> pack_k_scales(const int* sc, const int* mn) {
  std::vector<uint8_t> q(12, 0);
  for (int s = 0; s < 8; ++s) {
    if (s < 4) {
      q[s] = static_cast<uint8_t>(q[s] | sc[s]);
      q[s + 4] = static_cast<uint8_t>(q[s + 4] | mn[s]);
    } else {
      q[s + 4] = static_cast<uint8_t>(q[s + 4] | (sc[s] & 15) | ((mn[s] & 15) << 4));
      q[s - 4] = static_cast<uint8_t>(q[s - 4] | ((sc[s] >> 4) << 6));
      q[s] = static_cast<uint8_t>(q[s] | ((mn[s] >> 4) << 6));
    }
  }
  return q;
}

TEST(QuantDequant, Q4_KAndQ5_K) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 30; ++trial) {
    int sc[8], mn[8], level[256];
    for (int s = 0; s < 8; ++s) {
      sc[s] = static_cast<int>(rng() % 64);
      mn[s] = static_cast<int>(rng() % 64);
    }
    const uint16_t d = random_scale(rng),
                   dmin = fp32_to_fp16(std::fabs(fp16_to_fp32(random_scale(rng))));
    const auto scales = pack_k_scales(sc, mn);
    // Q4_K: element e sits in byte 32*(e/64) + e%32 of qs, low nibble if e%64 < 32.
    std::vector<uint8_t> q4(144, 0), q5(176, 0);
    put16(q4, 0, d);
    put16(q4, 2, dmin);
    put16(q5, 0, d);
    put16(q5, 2, dmin);
    std::memcpy(&q4[4], scales.data(), 12);
    std::memcpy(&q5[4], scales.data(), 12);
    for (int e = 0; e < 256; ++e) level[e] = static_cast<int>(rng() % 32);
    for (int e = 0; e < 256; ++e) {
      const int byte = 32 * (e / 64) + e % 32;
      const bool high = e % 64 >= 32;
      q4[16 + byte] = static_cast<uint8_t>(q4[16 + byte] | ((level[e] & 15) << (high ? 4 : 0)));
      q5[48 + byte] = static_cast<uint8_t>(q5[48 + byte] | ((level[e] & 15) << (high ? 4 : 0)));
      // Q5_K 5th bit: byte e%32 of qh, bit 2*(e/64) + high.
      if (level[e] & 16)
        q5[16 + e % 32] =
            static_cast<uint8_t>(q5[16 + e % 32] | (1 << (2 * (e / 64) + (high ? 1 : 0))));
    }
    std::vector<float> w4(256), w5(256);
    for (int e = 0; e < 256; ++e) {
      const int s = e / 32;
      const float ds = fp16_to_fp32(d) * static_cast<float>(sc[s]);
      const float ms = fp16_to_fp32(dmin) * static_cast<float>(mn[s]);
      w4[e] = ds * static_cast<float>(level[e] & 15) - ms;
      w5[e] = ds * static_cast<float>(level[e]) - ms;
    }
    expect_bits_equal(dequant(TensorType::Q4_K, q4, 256), w4, "Q4_K");
    expect_bits_equal(dequant(TensorType::Q5_K, q5, 256), w5, "Q5_K");
  }
}

TEST(QuantDequant, Q6_K) {
  std::mt19937 rng(4);
  for (int trial = 0; trial < 30; ++trial) {
    std::vector<uint8_t> b(210);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    put16(b, 208, random_scale(rng));
    uint16_t d;
    std::memcpy(&d, &b[208], 2);
    std::vector<float> want(256);
    for (int e = 0; e < 256; ++e) {
      // Element e: half h = e/128, quarter k = (e%128)/32, lane l = e%32. Low 4 bits: ql byte
      // 64h + 32*(k%2) + l, low nibble for k < 2; high 2 bits: bits 2k..2k+1 of qh[32h + l].
      const int h = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t lowbyte = b[64 * h + 32 * (k % 2) + l];
      const int low = k < 2 ? lowbyte & 15 : lowbyte >> 4;
      const int high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
      const auto scale = static_cast<int8_t>(b[192 + e / 16]);
      want[e] =
          fp16_to_fp32(d) * static_cast<float>(scale) * static_cast<float>((low | high << 4) - 32);
    }
    expect_bits_equal(dequant(TensorType::Q6_K, b, 256), want, "Q6_K");
  }
}

TEST(QuantDequant, Q8_K) {
  std::mt19937 rng(5);
  std::vector<uint8_t> b(292);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  const float d = -0.0123f;
  std::memcpy(&b[0], &d, 4);
  std::vector<float> want(256);
  for (int e = 0; e < 256; ++e) want[e] = d * static_cast<float>(static_cast<int8_t>(b[4 + e]));
  expect_bits_equal(dequant(TensorType::Q8_K, b, 256), want, "Q8_K");
}

TEST(QuantDequant, TQ2_0) {
  std::mt19937 rng(6);
  std::vector<uint8_t> b(66);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  put16(b, 64, 0x3555);
  std::vector<float> want(256);
  for (int e = 0; e < 256; ++e) {
    // Element e: byte 32*(e/128) + e%32, 2-bit field (e%128)/32; stored value t+1 (3 never
    // written).
    const int field = (b[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    want[e] = static_cast<float>(field - 1) * fp16_to_fp32(0x3555);
  }
  expect_bits_equal(dequant(TensorType::TQ2_0, b, 256), want, "TQ2_0");
}

// TQ1_0 stores base-3 numbers v (5 trits, first most significant) as ceil(v * 256 / 243).
uint8_t tq1_byte(const int* trits, int k) {
  int v = 0;
  for (int n = 0; n < 5; ++n) v = 3 * v + (n < k ? trits[n] : 0);
  return static_cast<uint8_t>((v * 256 + 242) / 243);
}

TEST(QuantDequant, TQ1_0) {
  // Every 5-trit number decodes back to its digits (element m + 32n holds trit n of byte m).
  for (int v = 0; v < 243; ++v) {
    std::vector<uint8_t> b(54, tq1_byte(std::array<int, 5>{1, 1, 1, 1, 1}.data(), 5));
    const int digits[5] = {v / 81 % 3, v / 27 % 3, v / 9 % 3, v / 3 % 3, v % 3};
    b[7] = tq1_byte(digits, 5);
    put16(b, 52, 0x3c00);
    const auto y = dequant(TensorType::TQ1_0, b, 256);
    for (int n = 0; n < 5; ++n) ASSERT_EQ(y[7 + 32 * n], static_cast<float>(digits[n] - 1)) << v;
  }
  std::mt19937 rng(7);
  int trit[256];
  for (int& t : trit) t = static_cast<int>(rng() % 3);
  std::vector<uint8_t> b(54);
  for (int m = 0; m < 32; ++m) {
    const int t[5] = {trit[m], trit[32 + m], trit[64 + m], trit[96 + m], trit[128 + m]};
    b[m] = tq1_byte(t, 5);
  }
  for (int m = 0; m < 16; ++m) {
    const int t[5] = {trit[160 + m], trit[176 + m], trit[192 + m], trit[208 + m], trit[224 + m]};
    b[32 + m] = tq1_byte(t, 5);
  }
  for (int j = 0; j < 4; ++j) {
    const int t[4] = {trit[240 + j], trit[244 + j], trit[248 + j], trit[252 + j]};
    b[48 + j] = tq1_byte(t, 4);
  }
  put16(b, 52, 0xb266);
  std::vector<float> want(256);
  for (int e = 0; e < 256; ++e) want[e] = static_cast<float>(trit[e] - 1) * fp16_to_fp32(0xb266);
  expect_bits_equal(dequant(TensorType::TQ1_0, b, 256), want, "TQ1_0");
}

// Two MXFP4 blocks (e = 128, then e = 1: denormal scales) and the floats ggml's
// dequantize_row_mxfp4 gives for them (llama.cpp's libggml-base 0.18.1, read as bit patterns).
TEST(QuantDequant, Mxfp4KnownBytesFromGgml) {
  const std::vector<uint8_t> bytes = {0x80, 0x00, 0x16, 0x2c, 0x42, 0x48, 0x5e, 0x74, 0x7a,
                                      0x90, 0xa6, 0xac, 0xc2, 0xd8, 0xde, 0xf4, 0x0a, 0x01,
                                      0xf0, 0xed, 0xca, 0xa7, 0x84, 0x61, 0x5e, 0x3b, 0x18,
                                      0xf5, 0xd2, 0xcf, 0xac, 0x89, 0x66, 0x43};
  const uint32_t want_bits[64] = {
      0x00000000, 0x41000000, 0xc0800000, 0x40000000, 0x00000000, 0xc1000000, 0x40800000,
      0xc0000000, 0x00000000, 0x41000000, 0xc0800000, 0x40000000, 0x00000000, 0xc1000000,
      0x40800000, 0xc0000000, 0x00000000, 0x3f800000, 0x40000000, 0x40800000, 0x40800000,
      0x40c00000, 0x41400000, 0x41400000, 0xbf800000, 0xc0000000, 0xc0000000, 0xc0800000,
      0xc0c00000, 0xc0c00000, 0xc1400000, 0x00000000, 0x00000000, 0x81400000, 0x80800000,
      0x01c00000, 0x01000000, 0x00400000, 0x81800000, 0x80c00000, 0x00000000, 0x01400000,
      0x00800000, 0x81c00000, 0x81000000, 0x80400000, 0x01800000, 0x00c00000, 0x81c00000,
      0x81800000, 0x81000000, 0x80800000, 0x00000000, 0x01800000, 0x01400000, 0x00c00000,
      0x00400000, 0x81c00000, 0x81400000, 0x81000000, 0x80800000, 0x00000000, 0x01800000,
      0x01000000};
  std::vector<float> want(64);
  for (int i = 0; i < 64; ++i) want[i] = std::bit_cast<float>(want_bits[i]);
  expect_bits_equal(dequant(TensorType::MXFP4, bytes, 64), want, "MXFP4");
  // Read by hand: e = 128 is a scale of 2, E2M1 code 0x6 is 4 and 0xC is -2, so byte 0x16 gives
  // element 2 = 2 * -2 and element 18 = 2 * 0.5.
  EXPECT_EQ(want[2], -4.0f);
  EXPECT_EQ(want[18], 2.0f);
}

// Random blocks against the OCP definition: 2^(e - 127) * (-1)^s * E2M1 (0 0.5 1 1.5 2 3 4 6).
TEST(QuantDequant, Mxfp4MatchesTheOcpDefinition) {
  const float e2m1[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  std::mt19937 rng(3);
  const int nb = 8;
  std::vector<uint8_t> q(17 * nb);
  for (auto& x : q) x = static_cast<uint8_t>(rng());
  q[0] = 127;  // scale 1
  q[17] = 0;   // 2^-127
  std::vector<float> want(32 * nb);
  for (int blk = 0; blk < nb; ++blk) {
    const double scale = std::ldexp(1.0, q[17 * blk] - 127);
    for (int e = 0; e < 32; ++e) {
      const uint8_t byte = q[17 * blk + 1 + e % 16];
      const int code = e < 16 ? byte & 15 : byte >> 4;
      const double v = (code & 8 ? -1.0 : 1.0) * e2m1[code & 7] * scale;
      want[32 * blk + e] = code == 8 ? 0.0f : static_cast<float>(v);  // ggml's -0 code is +0
    }
  }
  expect_bits_equal(dequant(TensorType::MXFP4, q, 32 * nb), want, "MXFP4");
}

// ggml's quantize_row_mxfp4_ref on a known row (same library as above).
TEST(QuantQuantize, Mxfp4EqualsGgmlOnAKnownRow) {
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = std::sin(static_cast<float>(i) * 0.7f) * 3.1f;
  x[5] += 9.5f;
  const uint8_t want[17] = {0x80, 0xb0, 0xa2, 0x03, 0x23, 0x31, 0x36, 0x1b, 0x9b,
                            0xba, 0xb0, 0xa2, 0x03, 0x23, 0x31, 0x39, 0x1b};
  uint8_t got[17];
  quantize_row(TensorType::MXFP4, x.data(), got, 32);
  for (int i = 0; i < 17; ++i) EXPECT_EQ(got[i], want[i]) << "byte " << i;
}

TEST(QuantDequant, HalfFormatsAndUnalignedSource) {
  std::mt19937 rng(8);
  std::vector<uint8_t> raw(1 + 2 * 64);
  for (auto& x : raw) x = static_cast<uint8_t>(rng());
  std::vector<float> f16(64), bf16(64), w16(64), wbf(64);
  dequantize_row(TensorType::F16, raw.data() + 1, f16.data(), 64);  // odd address
  dequantize_row(TensorType::BF16, raw.data() + 1, bf16.data(), 64);
  for (int i = 0; i < 64; ++i) {
    uint16_t h;
    std::memcpy(&h, raw.data() + 1 + 2 * i, 2);
    w16[i] = fp16_to_fp32(h);
    wbf[i] = bf16_to_fp32(h);
  }
  expect_bits_equal(f16, w16, "F16");
  expect_bits_equal(bf16, wbf, "BF16");
  std::vector<uint8_t> q(1 + 34);
  for (auto& x : q) x = static_cast<uint8_t>(rng());
  put16(q, 1, 0x3c00);
  std::vector<float> y(32);
  dequantize_row(TensorType::Q8_0, q.data() + 1, y.data(), 32);
  EXPECT_EQ(y[5], static_cast<float>(static_cast<int8_t>(q[1 + 2 + 5])));
}

// ---- quantize -> dequantize ----

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

std::vector<float> round_trip(TensorType t, const std::vector<float>& x) {
  std::vector<uint8_t> q(gguf::row_bytes(t, x.size()));
  quantize_row(t, x.data(), q.data(), static_cast<int64_t>(x.size()));
  return dequant(t, q, static_cast<int64_t>(x.size()));
}

double relative_rmse(const std::vector<float>& x, const std::vector<float>& y) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
    ref += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(err / ref);
}

TEST(QuantRoundTrip, GaussianErrorBounds) {
  // Bounds sit ~1.5x above what each format's bit width gives on N(0,1) data; a broken layout or a
  // wrong scale lands far beyond them.
  struct Bound {
    TensorType t;
    double max_rel_rmse;
  };
  const Bound bounds[] = {
      {TensorType::F32, 0.0},    {TensorType::F16, 5e-4},   {TensorType::BF16, 4e-3},
      {TensorType::Q8_0, 0.012}, {TensorType::Q8_K, 0.008}, {TensorType::Q6_K, 0.03},
      {TensorType::Q5_0, 0.06},  {TensorType::Q5_1, 0.05},  {TensorType::Q5_K, 0.045},
      {TensorType::Q4_0, 0.12},  {TensorType::Q4_1, 0.10},  {TensorType::Q4_K, 0.09},
      {TensorType::MXFP4, 0.17}};
  const auto x = gaussian(4096, 11);
  for (const auto& b : bounds) {
    const double e = relative_rmse(x, round_trip(b.t, x));
    EXPECT_LE(e, b.max_rel_rmse) << gguf::type_name(b.t);
    std::printf("%-5s relative RMSE %.5f\n", std::string(gguf::type_name(b.t)).c_str(), e);
  }
}

TEST(QuantRoundTrip, PerElementBoundsOfBlockFormats) {
  const auto x = gaussian(1024, 12, 3.0f);
  const auto q8 = round_trip(TensorType::Q8_0, x);
  const auto q4 = round_trip(TensorType::Q4_0, x);
  for (size_t blk = 0; blk < x.size() / 32; ++blk) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * blk + j]));
    for (int j = 0; j < 32; ++j) {
      const size_t i = 32 * blk + j;
      // Half a step, plus the fp16 rounding of the scale applied to the largest level.
      EXPECT_LE(std::fabs(x[i] - q8[i]), amax / 127 * 0.5f + amax * 1e-3f) << i;
      // Q4_0 maps the largest magnitude to level -8; on the other side levels stop at +7, so values
      // beyond 7/8 of the range may clip by up to a full step.
      const float q4_bound = std::fabs(x[i]) <= amax * 7 / 8 ? amax / 8 * 0.5f : amax / 8;
      EXPECT_LE(std::fabs(x[i] - q4[i]), q4_bound + amax * 1e-3f) << i;
    }
  }
}

TEST(QuantRoundTrip, TernaryIsExactOnTernaryData) {
  std::mt19937 rng(13);
  std::vector<float> x(512);
  for (auto& v : x) v = 0.75f * static_cast<float>(static_cast<int>(rng() % 3) - 1);
  x[3] = 0.75f;  // make sure each block's absmax is 0.75
  x[300] = -0.75f;
  for (TensorType t : {TensorType::TQ1_0, TensorType::TQ2_0}) {
    const auto y = round_trip(t, x);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]) << gguf::type_name(t) << " " << i;
  }
  // Gaussian data: every value becomes -d, 0 or d with d the block's absmax.
  const auto g = gaussian(256, 14);
  float amax = 0;
  for (float v : g) amax = std::max(amax, std::fabs(v));
  const float d = fp16_to_fp32(fp32_to_fp16(amax));
  for (TensorType t : {TensorType::TQ1_0, TensorType::TQ2_0}) {
    const auto y = round_trip(t, g);
    for (size_t i = 0; i < g.size(); ++i) {
      const float want = std::fabs(g[i]) < amax / 2 ? 0.0f : std::copysign(d, g[i]);
      ASSERT_EQ(y[i], want) << gguf::type_name(t) << " " << i;
    }
  }
}

TEST(QuantRoundTrip, ZeroAndConstantBlocks) {
  for (TensorType t : kAllTypes) {
    const std::vector<float> zeros(256, 0.0f);
    for (float v : round_trip(t, zeros)) ASSERT_EQ(v, 0.0f) << gguf::type_name(t);
    if (t == TensorType::TQ1_0 || t == TensorType::TQ2_0) continue;
    for (float c : {0.5f, -2.0f}) {
      const std::vector<float> k(256, c);
      for (float v : round_trip(t, k))
        ASSERT_NEAR(v, c, std::fabs(c) * 0.02f) << gguf::type_name(t) << " " << c;
    }
  }
}

TEST(QuantRoundTrip, KQuantsUseTheirRange) {
  // A block with one large sub-block and small ones: the small sub-blocks must still be resolved
  // (their own 6-bit scales), so the error stays relative to each sub-block's size.
  auto x = gaussian(256, 15, 0.05f);
  for (int i = 0; i < 32; ++i) x[i] *= 100.0f;
  for (TensorType t : {TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K}) {
    const auto y = round_trip(t, x);
    const std::vector<float> small_x(x.begin() + 64, x.end()), small_y(y.begin() + 64, y.end());
    EXPECT_LE(relative_rmse(small_x, small_y), 0.35) << gguf::type_name(t);
  }
}

TEST(QuantErrors, RejectsBadInput) {
  std::vector<float> x(256, 1.0f);
  std::vector<uint8_t> q(1024);
  std::vector<float> y(256);
  EXPECT_THROW(quantize_row(TensorType::Q4_0, x.data(), q.data(), 33), QuantError);
  EXPECT_THROW(dequantize_row(TensorType::Q4_K, q.data(), y.data(), 32), QuantError);
  EXPECT_THROW(dequantize_row(TensorType::Q4_0, q.data(), y.data(), -32), QuantError);
  EXPECT_THROW(quantize_row(TensorType::Q2_K, x.data(), q.data(), 256), QuantError);
  EXPECT_THROW(dequantize_row(static_cast<TensorType>(99), q.data(), y.data(), 32), QuantError);
  x[17] = NAN;
  try {
    quantize_row(TensorType::Q8_0, x.data(), q.data(), 256);
    ADD_FAILURE() << "NaN accepted";
  } catch (const QuantError& e) {
    EXPECT_NE(std::string(e.what()).find("element 17 is not finite"), std::string::npos)
        << e.what();
  }
  quantize_row(TensorType::F16, x.data(), q.data(), 256);  // plain float formats keep NaN
}

// The writer quantizes through this library; the tensor read back dequantizes to the same values.
TEST(QuantWriter, AddTensorF32QuantizesEveryFormat) {
  const auto x = gaussian(512, 16);
  gguf::GgufWriter w;
  for (TensorType t : kAllTypes)
    w.add_tensor_f32(std::string("t.") + std::string(gguf::type_name(t)), {256, 2}, x, t);
  const auto f = gguf::GgufFile::from_memory(w.to_bytes(), "q.gguf");
  for (TensorType t : kAllTypes) {
    const auto& info = f.tensor(std::string("t.") + std::string(gguf::type_name(t)));
    EXPECT_EQ(info.type, t);
    std::vector<float> y(512);
    dequantize_row(t, info.data, y.data(), 512);
    expect_bits_equal(y, round_trip(t, x), std::string(gguf::type_name(t)).c_str());
  }
}

}  // namespace
}  // namespace tessera::quant

namespace tessera::quant {
namespace {

// Every GGUF file shipped with the project or in the shared models folder must open, and every
// tensor of a type this library dequantizes must decode to finite values.
TEST(QuantRealFiles, EveryShippedGgufDequantizes) {
  std::vector<std::filesystem::path> roots = {std::filesystem::path(TESSERA_SOURCE_DIR) / "models"};
  if (const char* env = std::getenv("TESSERA_MODELS_DIR"))
    roots.emplace_back(env);
  else
    roots.push_back(std::filesystem::path(TESSERA_SOURCE_DIR) / ".." / "shared" / "models");
  int files = 0;
  for (const auto& root : roots) {
    if (!std::filesystem::is_directory(root)) continue;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
      if (entry.path().extension() != ".gguf") continue;
      const auto f = gguf::GgufFile::open(entry.path().string());
      ++files;
      for (const auto& t : f.tensors()) {
        if (!can_dequantize(t.type)) continue;
        std::vector<float> y(t.dims[0]);
        for (uint64_t r = 0; r < t.n_rows(); ++r) {
          dequantize_row(t.type, t.data + r * gguf::row_bytes(t.type, t.dims[0]), y.data(),
                         static_cast<int64_t>(t.dims[0]));
          for (float v : y)
            ASSERT_TRUE(std::isfinite(v)) << entry.path() << " " << t.name << " row " << r;
        }
      }
    }
  }
  if (files == 0) GTEST_SKIP() << "no .gguf files found under the models folders";
  std::printf("checked %d GGUF files\n", files);
}

}  // namespace
}  // namespace tessera::quant
