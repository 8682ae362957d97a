// fp16/bf16 <-> fp32 conversions done with integer arithmetic, so the result never depends on the
// floating-point environment (rounding mode, flush-to-zero) of the calling thread.
#include "host/common/half.h"

#include <bit>

namespace tessera {

namespace {

// Rounds value >> shift to nearest, ties to even (shift >= 1).
uint32_t shift_round_even(uint32_t value, uint32_t shift) {
  const uint32_t kept = value >> shift;
  const uint32_t rest = value & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  return kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
}

}  // namespace

uint16_t fp32_to_fp16(float f) {
  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((w >> 16) & 0x8000u);
  const uint32_t a = w & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN: canonical quiet NaN, as ggml
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds past 65504 to Inf
  const uint32_t exp = a >> 23;
  const uint32_t mant = a & 0x7fffffu;
  if (exp >= 113) {  // normal half: re-bias the exponent, round 13 mantissa bits away
    const uint32_t h = ((exp - 112u) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fffu;
    const uint32_t up = (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ? 1u : 0u;
    return static_cast<uint16_t>(sign | (h + up));  // a carry into the exponent is correct rounding
  }
  if (exp < 102) return sign;  // below half of the smallest subnormal (2^-25): rounds to zero
  // Subnormal half: units of 2^-24. The float is (mant | implicit bit) * 2^(exp-150).
  const uint32_t m = mant | 0x800000u;
  return static_cast<uint16_t>(sign | shift_round_even(m, 126u - exp));
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return std::bit_cast<float>(sign);
  // Subnormal: normalize the mantissa into a float exponent.
  uint32_t e = 113;
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return std::bit_cast<float>(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

uint16_t fp32_to_bf16(float f) {
  const uint32_t w = std::bit_cast<uint32_t>(f);
  if ((w & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((w >> 16) | 0x40u);
  return static_cast<uint16_t>((w + 0x7fffu + ((w >> 16) & 1u)) >> 16);
}

float bf16_to_fp32(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

}  // namespace tessera
