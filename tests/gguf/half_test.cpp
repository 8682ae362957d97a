// fp16/bf16 conversions: exhaustive checks against the compiler's _Float16 and hand-worked cases
// for rounding ties, subnormals, overflow and NaN.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>

#include "host/common/half.h"

namespace tessera {
namespace {

uint16_t h(float f) {
  return fp32_to_fp16(f);
}
float bits(uint32_t b) {
  return std::bit_cast<float>(b);
}

TEST(Fp16, HandWorkedCases) {
  EXPECT_EQ(h(0.0f), 0x0000);
  EXPECT_EQ(h(-0.0f), 0x8000);
  EXPECT_EQ(h(1.0f), 0x3c00);
  EXPECT_EQ(h(-2.0f), 0xc000);
  EXPECT_EQ(h(65504.0f), 0x7bff);   // largest finite half
  EXPECT_EQ(h(65519.99f), 0x7bff);  // below the midpoint to 65536
  EXPECT_EQ(h(65520.0f), 0x7c00);   // midpoint, odd mantissa: rounds up to Inf
  EXPECT_EQ(h(1e10f), 0x7c00);
  EXPECT_EQ(h(-INFINITY), 0xfc00);
  EXPECT_EQ(h(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(h(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(h(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even is 0
  EXPECT_EQ(h(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(h(3 * std::ldexp(1.0f, -25)), 0x0002);         // 1.5 units: tie to even 2
  EXPECT_EQ(h(5 * std::ldexp(1.0f, -25)), 0x0002);         // 2.5 units: tie to even 2
  EXPECT_EQ(h(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie, 1.0 is even
  EXPECT_EQ(h(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie, 1+2^-10 is odd -> up
  EXPECT_EQ(h(std::ldexp(1023.5f / 1024.0f, -14)),
            0x0400);                        // subnormal rounding up to the smallest normal
  EXPECT_EQ(h(bits(0x7fc00000u)), 0x7e00);  // NaN -> canonical quiet NaN with sign
  EXPECT_EQ(h(bits(0xff800001u)), 0xfe00);
  EXPECT_EQ(h(bits(0x7f800001u)), 0x7e00);
}

TEST(Fp16, DecodeHandWorked) {
  EXPECT_EQ(fp16_to_fp32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x7c00), INFINITY);
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7e00)));
  EXPECT_EQ(std::bit_cast<uint32_t>(fp16_to_fp32(0x8000)), 0x80000000u);
}

// Every half value decodes to a float that encodes back to the same half.
TEST(Fp16, AllHalvesRoundTrip) {
  for (uint32_t x = 0; x < 0x10000; ++x) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(x));
    if (std::isnan(f)) {
      EXPECT_EQ(fp32_to_fp16(f), (x & 0x8000u) | 0x7e00u) << x;
    } else {
      ASSERT_EQ(fp32_to_fp16(f), x) << "half " << x;
    }
  }
}

#ifdef __FLT16_MAX__
// The compiler's _Float16 (libgcc soft-float or F16C) is an independent IEEE round-to-nearest-even
// implementation; all finite and infinite values must agree bit for bit.
TEST(Fp16, MatchesCompilerFloat16) {
  for (uint32_t x = 0; x < 0x10000; ++x) {
    const _Float16 v = std::bit_cast<_Float16>(static_cast<uint16_t>(x));
    const float expected = static_cast<float>(v);
    if (std::isnan(expected)) continue;
    ASSERT_EQ(std::bit_cast<uint32_t>(fp16_to_fp32(static_cast<uint16_t>(x))),
              std::bit_cast<uint32_t>(expected));
  }
  std::mt19937 rng(1234);
  for (int i = 0; i < 2'000'000; ++i) {
    uint32_t w = rng();
    // Half the samples are concentrated on the fp16 range (exponents 100..145) where rounding
    // matters.
    if (i & 1) w = (w & 0x807fffffu) | ((100u + (w >> 23) % 46u) << 23);
    const float f = std::bit_cast<float>(w);
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16(f), std::bit_cast<uint16_t>(static_cast<_Float16>(f))) << std::hex << w;
  }
}
#endif

// Independent bf16 reference: pick the nearer of the two neighbouring bf16 values in double
// arithmetic.
uint16_t bf16_reference(float f) {
  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint16_t lo = static_cast<uint16_t>(w >> 16);
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double vlo = bf16_to_fp32(lo);
  const double vhi =
      (hi & 0x7f80u) == 0x7f80u && (lo & 0x7fffu) == 0x7f7fu
          ? std::copysign(std::ldexp(1.0, 128), f)  // next step past the largest finite
          : static_cast<double>(bf16_to_fp32(hi));
  const double dlo = std::fabs(static_cast<double>(f) - vlo);
  const double dhi = std::fabs(vhi - static_cast<double>(f));
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(Bf16, HandWorkedCases) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(bits(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(bits(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_bf16(bits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(fp32_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(fp32_to_bf16(bits(0x7f7fffffu)), 0x7f80);  // rounds to Inf
  EXPECT_EQ(fp32_to_bf16(bits(0x7fc00001u)), 0x7fc0);  // NaN stays NaN
  EXPECT_EQ(fp32_to_bf16(bits(0x7f800001u)), 0x7fc0);  // signalling NaN made quiet, not Inf
  EXPECT_EQ(fp32_to_bf16(bits(0xff810000u)), 0xffc1);  // payload and sign kept
  EXPECT_EQ(fp32_to_bf16(bits(0x00000001u)), 0x0000);  // subnormals round like everything else
  EXPECT_EQ(fp32_to_bf16(bits(0x00018000u)), 0x0002);
  EXPECT_EQ(bf16_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(std::bit_cast<uint32_t>(bf16_to_fp32(0xffc1)), 0xffc10000u);
}

TEST(Bf16, MatchesNearestReference) {
  std::mt19937 rng(99);
  for (int i = 0; i < 1'000'000; ++i) {
    uint32_t w = rng();
    if (i % 4 == 0) w = (w & 0xffff0000u) | 0x8000u;  // exact ties
    const float f = std::bit_cast<float>(w);
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_bf16(f), bf16_reference(f)) << std::hex << w;
  }
}

}  // namespace
}  // namespace tessera
