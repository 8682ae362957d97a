// ggml's on-disk quantization blocks, field for field (ggml-common.h). Sizes and field offsets are
// checked at compile time; every row of these blocks in a GGUF file is bit-compatible with ggml.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace tessera::quant {

inline constexpr int kQK4_0 = 32;
inline constexpr int kQK4_1 = 32;
inline constexpr int kQK5_0 = 32;
inline constexpr int kQK5_1 = 32;
inline constexpr int kQK8_0 = 32;
inline constexpr int kQKMxfp4 = 32;
inline constexpr int kQK_K = 256;       // super-block of the K-quants and ternary formats
inline constexpr int kKScaleSize = 12;  // packed 6-bit scales and mins of Q4_K/Q5_K

// Scales stored as IEEE fp16 bit patterns (host/common/half.h converts them).
struct BlockQ4_0 {
  uint16_t d;              // scale; value = d * (nibble - 8)
  uint8_t qs[kQK4_0 / 2];  // element j in the low nibble of qs[j], element j+16 in the high one
};
struct BlockQ4_1 {
  uint16_t d, m;  // value = d * nibble + m
  uint8_t qs[kQK4_1 / 2];
};
struct BlockQ5_0 {
  uint16_t d;              // value = d * (q5 - 16)
  uint8_t qh[4];           // bit j = 5th bit of element j (little-endian uint32)
  uint8_t qs[kQK5_0 / 2];  // low 4 bits, laid out as Q4_0
};
struct BlockQ5_1 {
  uint16_t d, m;  // value = d * q5 + m
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
struct BlockQ8_0 {
  uint16_t d;  // value = d * q
  int8_t qs[kQK8_0];
};
// 8 sub-blocks of 32: value = d * sc[s] * q4 - dmin * m[s], 6-bit sc/m packed in `scales`.
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qs[kQK_K / 2];  // per 64 elements: 32 bytes, low nibbles first 32, high nibbles next 32
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[kKScaleSize];
  uint8_t qh[kQK_K / 8];  // 5th bits: element 64g+l uses bit 2g of qh[l], 64g+32+l bit 2g+1
  uint8_t qs[kQK_K / 2];
};
// 16 sub-blocks of 16: value = d * scales[s] * (q6 - 32).
struct BlockQ6_K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
// Intermediate format of ggml's dot products: float scale, int8 quants, sums of 16 quants.
struct BlockQ8_K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
// Ternary (BitNet b1.58): value = d * t, t in {-1, 0, 1}. TQ1_0 packs 5 trits per byte (base 3,
// scaled to 0..255), TQ2_0 packs 2 bits per trit.
struct BlockTQ1_0 {
  uint8_t qs[(kQK_K - 4 * kQK_K / 64) / 5];  // 48 bytes: 240 elements
  uint8_t qh[kQK_K / 64];                    // 4 bytes: 16 elements, 4 trits each
  uint16_t d;
};
struct BlockTQ2_0 {
  uint8_t qs[kQK_K / 4];
  uint16_t d;
};

// OCP microscaling FP4 (gpt-oss's expert weights): value = 2^(e - 127) * e2m1(nibble). ggml stores
// the E2M1 values doubled (kMxfp4Values) and halves the scale (mxfp4_scale_half) so both are exact.
struct BlockMxfp4 {
  uint8_t e;                 // E8M0 shared exponent
  uint8_t qs[kQKMxfp4 / 2];  // element j in the low nibble of qs[j], element j+16 in the high one
};
// E2M1 code -> twice its value (ggml's kvalues_mxfp4): sign bit 3, then 0 0.5 1 1.5 2 3 4 6.
inline constexpr int8_t kMxfp4Values[16] = {0, 1,  2,  3,  4,  6,  8,  12,
                                            0, -1, -2, -3, -4, -6, -8, -12};

// 2^(e - 128), half the block's scale, as ggml_e8m0_to_fp32_half builds it (denormal for e < 2; e =
// 255 is not treated as NaN).
inline float mxfp4_scale_half(uint8_t e) {
  const uint32_t bits = e < 2 ? 0x00200000u << e : static_cast<uint32_t>(e - 1) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

static_assert(sizeof(BlockMxfp4) == 17 && offsetof(BlockMxfp4, qs) == 1);
static_assert(sizeof(BlockQ4_0) == 18 && offsetof(BlockQ4_0, qs) == 2);
static_assert(sizeof(BlockQ4_1) == 20 && offsetof(BlockQ4_1, qs) == 4);
static_assert(sizeof(BlockQ5_0) == 22 && offsetof(BlockQ5_0, qh) == 2 &&
              offsetof(BlockQ5_0, qs) == 6);
static_assert(sizeof(BlockQ5_1) == 24 && offsetof(BlockQ5_1, qh) == 4 &&
              offsetof(BlockQ5_1, qs) == 8);
static_assert(sizeof(BlockQ8_0) == 34 && offsetof(BlockQ8_0, qs) == 2);
static_assert(sizeof(BlockQ4_K) == 144 && offsetof(BlockQ4_K, scales) == 4 &&
              offsetof(BlockQ4_K, qs) == 16);
static_assert(sizeof(BlockQ5_K) == 176 && offsetof(BlockQ5_K, qh) == 16 &&
              offsetof(BlockQ5_K, qs) == 48);
static_assert(sizeof(BlockQ6_K) == 210 && offsetof(BlockQ6_K, qh) == 128 &&
              offsetof(BlockQ6_K, scales) == 192 && offsetof(BlockQ6_K, d) == 208);
static_assert(sizeof(BlockQ8_K) == 292 && offsetof(BlockQ8_K, qs) == 4 &&
              offsetof(BlockQ8_K, bsums) == 260);
static_assert(sizeof(BlockTQ1_0) == 54 && offsetof(BlockTQ1_0, qh) == 48 &&
              offsetof(BlockTQ1_0, d) == 52);
static_assert(sizeof(BlockTQ2_0) == 66 && offsetof(BlockTQ2_0, d) == 64);

}  // namespace tessera::quant
