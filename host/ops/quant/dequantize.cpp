// Dequantization of every supported block format. Each formula keeps ggml's evaluation order
// (e.g. (d * sc) * q, then - m) so results match ggml bit for bit; this file is compiled with
// -ffp-contract=off so the compiler never fuses a multiply and an add.
#include <cstring>
#include <string>

#include "host/common/half.h"
#include "host/ops/quant/blocks.h"
#include "host/ops/quant/quant.h"

namespace tessera::quant {

namespace {

using gguf::TensorType;

// Copies block b out of an arbitrarily aligned row.
template <typename Block>
Block load_block(const void* src, int64_t b) {
  Block blk;
  std::memcpy(&blk, static_cast<const uint8_t*>(src) + b * static_cast<int64_t>(sizeof(Block)),
              sizeof(Block));
  return blk;
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block: sub-blocks 0-3 keep
// theirs in the low 6 bits of bytes 0-3 / 4-7; sub-blocks 4-7 split theirs between the nibbles of
// bytes 8-11 and the top 2 bits of bytes 0-7.
void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void dequant_q4_0(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ4_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      y[j] = static_cast<float>((b.qs[j] & 0x0f) - 8) * d;
      y[j + kQK4_0 / 2] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
    }
    y += kQK4_0;
  }
}

void dequant_q4_1(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ4_1>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float m = fp16_to_fp32(b.m);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      y[j] = static_cast<float>(b.qs[j] & 0x0f) * d + m;
      y[j + kQK4_1 / 2] = static_cast<float>(b.qs[j] >> 4) * d + m;
    }
    y += kQK4_1;
  }
}

uint32_t high_bits(const uint8_t (&qh)[4]) {
  uint32_t h;
  std::memcpy(&h, qh, 4);
  return h;
}

void dequant_q5_0(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ5_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    const uint32_t qh = high_bits(b.qh);
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int lo = (b.qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + kQK5_0 / 2] = static_cast<float>(hi - 16) * d;
    }
    y += kQK5_0;
  }
}

void dequant_q5_1(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ5_1>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float m = fp16_to_fp32(b.m);
    const uint32_t qh = high_bits(b.qh);
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int lo = (b.qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
      const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo) * d + m;
      y[j + kQK5_1 / 2] = static_cast<float>(hi) * d + m;
    }
    y += kQK5_1;
  }
}

void dequant_q8_0(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ8_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < kQK8_0; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
    y += kQK8_0;
  }
}

void dequant_q4_k(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ4_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float dmin = fp16_to_fp32(b.dmin);
    for (int g = 0; g < 4; ++g) {  // 4 groups of 64 = two sub-blocks sharing 32 bytes
      const uint8_t* q = b.qs + 32 * g;
      uint8_t sc, m;
      scale_min_k4(2 * g, b.scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      scale_min_k4(2 * g + 1, b.scales, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) y[32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
      y += 64;
    }
  }
}

void dequant_q5_k(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ5_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    const float dmin = fp16_to_fp32(b.dmin);
    for (int g = 0; g < 4; ++g) {
      const uint8_t* q = b.qs + 32 * g;
      const uint8_t bit_lo = static_cast<uint8_t>(1u << (2 * g)),
                    bit_hi = static_cast<uint8_t>(2u << (2 * g));
      uint8_t sc, m;
      scale_min_k4(2 * g, b.scales, sc, m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      scale_min_k4(2 * g + 1, b.scales, sc, m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l)
        y[l] = d1 * static_cast<float>((q[l] & 0x0f) + ((b.qh[l] & bit_lo) ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l)
        y[32 + l] = d2 * static_cast<float>((q[l] >> 4) + ((b.qh[l] & bit_hi) ? 16 : 0)) - m2;
      y += 64;
    }
  }
}

void dequant_q6_k(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ6_K>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int half = 0; half < 2; ++half) {  // 128 elements each: 64 bytes of ql, 32 of qh, 8 scales
      const uint8_t* ql = b.ql + 64 * half;
      const uint8_t* qh = b.qh + 32 * half;
      const int8_t* sc = b.scales + 8 * half;
      for (int l = 0; l < 32; ++l) {
        const int s = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[s]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[s + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[s + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[s + 6]) * static_cast<float>(q4);
      }
      y += 128;
    }
  }
}

void dequant_q8_k(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockQ8_K>(src, i);
    for (int j = 0; j < kQK_K; ++j) y[j] = b.d * static_cast<float>(b.qs[j]);
    y += kQK_K;
  }
}

// Trit n (0 = most significant) of a byte holding ceil(value * 256 / 243): multiplying by 3^n
// modulo 256 shifts the wanted trit to the top, and (q * 3) >> 8 reads it.
int trit(uint8_t byte, int n) {
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  const auto q = static_cast<uint8_t>(byte * kPow3[n]);
  return (q * 3) >> 8;
}

void dequant_tq1_0(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockTQ1_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    // qs[0..31]: elements n*32 + m; qs[32..47]: 160 + n*16 + m; qh[0..3]: 240 + n*4 + j.
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 32; ++m) *y++ = static_cast<float>(trit(b.qs[m], n) - 1) * d;
    for (int n = 0; n < 5; ++n)
      for (int m = 0; m < 16; ++m) *y++ = static_cast<float>(trit(b.qs[32 + m], n) - 1) * d;
    for (int n = 0; n < 4; ++n)
      for (int j = 0; j < 4; ++j) *y++ = static_cast<float>(trit(b.qh[j], n) - 1) * d;
  }
}

void dequant_mxfp4(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockMxfp4>(src, i);
    const float d = mxfp4_scale_half(b.e);
    for (int j = 0; j < kQKMxfp4 / 2; ++j) {
      y[j] = static_cast<float>(kMxfp4Values[b.qs[j] & 0x0f]) * d;
      y[j + kQKMxfp4 / 2] = static_cast<float>(kMxfp4Values[b.qs[j] >> 4]) * d;
    }
    y += kQKMxfp4;
  }
}

void dequant_tq2_0(const void* src, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const auto b = load_block<BlockTQ2_0>(src, i);
    const float d = fp16_to_fp32(b.d);
    for (int j = 0; j < kQK_K / 4; j += 32)
      for (int l = 0; l < 4; ++l)
        for (int m = 0; m < 32; ++m)
          *y++ = static_cast<float>(((b.qs[j + m] >> (2 * l)) & 3) - 1) * d;
  }
}

}  // namespace

bool can_dequantize(TensorType t) {
  switch (t) {
    case TensorType::F32:
    case TensorType::F16:
    case TensorType::BF16:
    case TensorType::Q4_0:
    case TensorType::Q4_1:
    case TensorType::Q5_0:
    case TensorType::Q5_1:
    case TensorType::Q8_0:
    case TensorType::Q4_K:
    case TensorType::Q5_K:
    case TensorType::Q6_K:
    case TensorType::Q8_K:
    case TensorType::TQ1_0:
    case TensorType::TQ2_0:
    case TensorType::MXFP4:
      return true;
    default:
      return false;
  }
}

void dequantize_row(TensorType t, const void* src, float* dst, int64_t n) {
  const gguf::TypeTraits* tr = gguf::type_traits(t);
  if (!tr || !can_dequantize(t))
    throw QuantError("dequantize_row: type " + std::string(gguf::type_name(t)) +
                     " is not supported");
  if (n < 0 || n % tr->block_size != 0)
    throw QuantError("dequantize_row: " + std::to_string(n) + " elements of " +
                     std::string(tr->name) + " is not a non-negative multiple of the block size " +
                     std::to_string(tr->block_size));
  const int64_t nb = n / tr->block_size;
  const auto* bytes = static_cast<const uint8_t*>(src);
  switch (t) {
    case TensorType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case TensorType::F16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        dst[i] = fp16_to_fp32(h);
      }
      return;
    case TensorType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + 2 * i, 2);
        dst[i] = bf16_to_fp32(h);
      }
      return;
    case TensorType::Q4_0:
      dequant_q4_0(src, dst, nb);
      return;
    case TensorType::Q4_1:
      dequant_q4_1(src, dst, nb);
      return;
    case TensorType::Q5_0:
      dequant_q5_0(src, dst, nb);
      return;
    case TensorType::Q5_1:
      dequant_q5_1(src, dst, nb);
      return;
    case TensorType::Q8_0:
      dequant_q8_0(src, dst, nb);
      return;
    case TensorType::Q4_K:
      dequant_q4_k(src, dst, nb);
      return;
    case TensorType::Q5_K:
      dequant_q5_k(src, dst, nb);
      return;
    case TensorType::Q6_K:
      dequant_q6_k(src, dst, nb);
      return;
    case TensorType::Q8_K:
      dequant_q8_k(src, dst, nb);
      return;
    case TensorType::TQ1_0:
      dequant_tq1_0(src, dst, nb);
      return;
    case TensorType::TQ2_0:
      dequant_tq2_0(src, dst, nb);
      return;
    case TensorType::MXFP4:
      dequant_mxfp4(src, dst, nb);
      return;
    default:
      break;
  }
  throw QuantError("dequantize_row: type " + std::string(gguf::type_name(t)) + " is not supported");
}

}  // namespace tessera::quant
