// Reference quantizers: per block, round to nearest on a scale chosen from the block's range (as
// ggml's *_ref functions do); the K-quants also try a few nearby scales and keep the one with the
// least squared error. Deterministic, single-threaded, meant for tests, fixtures and tools.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "host/common/half.h"
#include "host/ops/quant/blocks.h"
#include "host/ops/quant/quant.h"

namespace tessera::quant {

namespace {

using gguf::TensorType;

template <typename Block>
void store_block(void* dst, int64_t b, const Block& blk) {
  std::memcpy(static_cast<uint8_t*>(dst) + b * static_cast<int64_t>(sizeof(Block)), &blk,
              sizeof(Block));
}

// Round half to even (the default rounding mode), as ggml's nearest_int.
int nearest(float x) {
  return static_cast<int>(std::nearbyint(x));
}

// The element of largest magnitude, with its sign (the first one on ties).
float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j)
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  return max;
}

// Symmetric formats: the largest-magnitude element maps to the most negative level (-8 of -8..7),
// which uses the one extra negative level of the asymmetric integer range.
void quant_q4_0(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK4_0) {
    const float d = signed_absmax(x, kQK4_0) / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_0 b{};
    b.d = fp32_to_fp16(d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const int lo = std::min(15, static_cast<int>(std::floor(x[j] * id + 8.5f)));
      const int hi = std::min(15, static_cast<int>(std::floor(x[j + 16] * id + 8.5f)));
      b.qs[j] = static_cast<uint8_t>(std::max(0, lo) | (std::max(0, hi) << 4));
    }
    store_block(dst, i, b);
  }
}

void min_max(const float* x, int n, float& mn, float& mx) {
  mn = x[0];
  mx = x[0];
  for (int j = 1; j < n; ++j) {
    mn = std::min(mn, x[j]);
    mx = std::max(mx, x[j]);
  }
}

void quant_q4_1(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK4_1) {
    float mn, mx;
    min_max(x, kQK4_1, mn, mx);
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ4_1 b{};
    b.d = fp32_to_fp16(d);
    b.m = fp32_to_fp16(mn);
    for (int j = 0; j < kQK4_1 / 2; ++j) {
      const int lo = std::clamp(static_cast<int>((x[j] - mn) * id + 0.5f), 0, 15);
      const int hi = std::clamp(static_cast<int>((x[j + 16] - mn) * id + 0.5f), 0, 15);
      b.qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
    store_block(dst, i, b);
  }
}

void quant_q5_0(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK5_0) {
    const float d = signed_absmax(x, kQK5_0) / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ5_0 b{};
    b.d = fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_0 / 2; ++j) {
      const int lo = std::clamp(static_cast<int>(std::floor(x[j] * id + 16.5f)), 0, 31);
      const int hi = std::clamp(static_cast<int>(std::floor(x[j + 16] * id + 16.5f)), 0, 31);
      b.qs[j] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
      qh |= static_cast<uint32_t>(lo >> 4) << j;
      qh |= static_cast<uint32_t>(hi >> 4) << (j + 16);
    }
    std::memcpy(b.qh, &qh, 4);
    store_block(dst, i, b);
  }
}

void quant_q5_1(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK5_1) {
    float mn, mx;
    min_max(x, kQK5_1, mn, mx);
    const float d = (mx - mn) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ5_1 b{};
    b.d = fp32_to_fp16(d);
    b.m = fp32_to_fp16(mn);
    uint32_t qh = 0;
    for (int j = 0; j < kQK5_1 / 2; ++j) {
      const int lo = std::clamp(static_cast<int>((x[j] - mn) * id + 0.5f), 0, 31);
      const int hi = std::clamp(static_cast<int>((x[j + 16] - mn) * id + 0.5f), 0, 31);
      b.qs[j] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
      qh |= static_cast<uint32_t>(lo >> 4) << j;
      qh |= static_cast<uint32_t>(hi >> 4) << (j + 16);
    }
    std::memcpy(b.qh, &qh, 4);
    store_block(dst, i, b);
  }
}

void quant_q8_0(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK8_0) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    BlockQ8_0 b{};
    b.d = fp32_to_fp16(d);
    for (int j = 0; j < kQK8_0; ++j)
      b.qs[j] = static_cast<int8_t>(std::clamp(std::round(x[j] * id), -127.0f, 127.0f));
    store_block(dst, i, b);
  }
}

// Fits x ~ scale * L + offset (offset <= 0, L in 0..nmax) for one sub-block: starts from the plain
// min/max grid, then tries slightly stretched and shrunk grids, refitting scale and offset by least
// squares for each, and keeps the best. Returns scale; `neg_min` receives -offset (>= 0).
float fit_scale_min(const float* x, int n, int nmax, float& neg_min) {
  float mn, mx;
  min_max(x, n, mn, mx);
  mn = std::min(mn, 0.0f);  // the format stores a non-negative min subtracted from the values
  if (mx <= mn) {
    neg_min = -mn;
    return 0.0f;
  }
  float best_scale = (mx - mn) / static_cast<float>(nmax);
  float best_min = mn;
  auto error_of = [&](float scale, float offset) {
    double err = 0;
    for (int j = 0; j < n; ++j) {
      const int l = scale > 0 ? std::clamp(nearest((x[j] - offset) / scale), 0, nmax) : 0;
      const double diff = static_cast<double>(scale) * l + offset - x[j];
      err += diff * diff;
    }
    return err;
  };
  double best_err = error_of(best_scale, best_min);
  for (int step = -10; step <= 10; ++step) {
    const float iscale = (static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / (mx - mn);
    double sl = 0, sl2 = 0, sx = 0, sxl = 0;
    for (int j = 0; j < n; ++j) {
      const int l = std::clamp(nearest(iscale * (x[j] - mn)), 0, nmax);
      sl += l;
      sl2 += static_cast<double>(l) * l;
      sx += x[j];
      sxl += static_cast<double>(l) * x[j];
    }
    const double det = n * sl2 - sl * sl;
    if (det <= 0) continue;
    double scale = (n * sxl - sx * sl) / det;
    double offset = (sl2 * sx - sl * sxl) / det;
    if (offset > 0) {  // the offset must stay <= 0: refit the scale alone
      offset = 0;
      scale = sxl / sl2;
    }
    if (scale <= 0) continue;
    const double err = error_of(static_cast<float>(scale), static_cast<float>(offset));
    if (err < best_err) {
      best_err = err;
      best_scale = static_cast<float>(scale);
      best_min = static_cast<float>(offset);
    }
  }
  neg_min = -best_min;
  return best_scale;
}

// Packs 6-bit scale/min of sub-block j into the 12-byte layout Q4_K and Q5_K share.
void pack_scale_min_k4(int j, uint8_t sc, uint8_t m, uint8_t* q) {
  if (j < 4) {
    q[j] = static_cast<uint8_t>((q[j] & 0xc0) | sc);
    q[j + 4] = static_cast<uint8_t>((q[j + 4] & 0xc0) | m);
  } else {
    q[j + 4] = static_cast<uint8_t>((sc & 0x0f) | ((m & 0x0f) << 4));
    q[j - 4] = static_cast<uint8_t>(q[j - 4] | ((sc >> 4) << 6));
    q[j] = static_cast<uint8_t>(q[j] | ((m >> 4) << 6));
  }
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): 8 sub-blocks of 32 with 6-bit scales and mins
// relative to two fp16 super-block factors. Fills L with the final levels of the 256 elements.
template <typename Block>
void quant_k_scales(const float* x, int nmax, Block& b, uint8_t* L) {
  float scales[8], mins[8];
  float max_scale = 0, max_min = 0;
  for (int s = 0; s < 8; ++s) {
    scales[s] = fit_scale_min(x + 32 * s, 32, nmax, mins[s]);
    max_scale = std::max(max_scale, scales[s]);
    max_min = std::max(max_min, mins[s]);
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  std::memset(b.scales, 0, sizeof b.scales);
  for (int s = 0; s < 8; ++s) {
    const auto ls = static_cast<uint8_t>(std::clamp(nearest(inv_scale * scales[s]), 0, 63));
    const auto lm = static_cast<uint8_t>(std::clamp(nearest(inv_min * mins[s]), 0, 63));
    pack_scale_min_k4(s, ls, lm, b.scales);
  }
  b.d = fp32_to_fp16(max_scale / 63.0f);
  b.dmin = fp32_to_fp16(max_min / 63.0f);
  // Levels against the scales as the decoder will see them (fp16 factors times 6-bit values).
  for (int s = 0; s < 8; ++s) {
    const int j = s;
    uint8_t sc, m;
    if (j < 4) {
      sc = b.scales[j] & 63;
      m = b.scales[j + 4] & 63;
    } else {
      sc = static_cast<uint8_t>((b.scales[j + 4] & 0x0f) | ((b.scales[j - 4] >> 6) << 4));
      m = static_cast<uint8_t>((b.scales[j + 4] >> 4) | ((b.scales[j] >> 6) << 4));
    }
    const float d = fp16_to_fp32(b.d) * static_cast<float>(sc);
    const float dm = fp16_to_fp32(b.dmin) * static_cast<float>(m);
    for (int l = 0; l < 32; ++l)
      L[32 * s + l] =
          d != 0.0f ? static_cast<uint8_t>(std::clamp(nearest((x[32 * s + l] + dm) / d), 0, nmax))
                    : 0;
  }
}

void quant_q4_k(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    BlockQ4_K b{};
    uint8_t L[kQK_K];
    quant_k_scales(x, 15, b, L);
    for (int g = 0; g < 4; ++g)
      for (int l = 0; l < 32; ++l)
        b.qs[32 * g + l] = static_cast<uint8_t>(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
    store_block(dst, i, b);
  }
}

void quant_q5_k(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    BlockQ5_K b{};
    uint8_t L[kQK_K];
    quant_k_scales(x, 31, b, L);
    for (int g = 0; g < 4; ++g) {
      for (int l = 0; l < 32; ++l) {
        const int lo = L[64 * g + l], hi = L[64 * g + 32 + l];
        b.qs[32 * g + l] = static_cast<uint8_t>((lo & 0x0f) | ((hi & 0x0f) << 4));
        if (lo & 16) b.qh[l] = static_cast<uint8_t>(b.qh[l] | (1u << (2 * g)));
        if (hi & 16) b.qh[l] = static_cast<uint8_t>(b.qh[l] | (2u << (2 * g)));
      }
    }
    store_block(dst, i, b);
  }
}

// Q6_K: 16 sub-blocks of 16, symmetric levels -32..31 with an int8 scale each, relative to one fp16
// factor. Each sub-block's scale maps its largest-magnitude element to -32, then a few nearby
// scales are tried for the least squared error.
float fit_symmetric(const float* x, int n) {
  const float max = signed_absmax(x, n);
  if (max == 0.0f) return 0.0f;
  float best = max / -32.0f;
  double best_err = -1;
  for (int step = -8; step <= 8; ++step) {
    const float iscale = -(32.0f + 0.25f * static_cast<float>(step)) / max;
    double sxl = 0, sl2 = 0;
    for (int j = 0; j < n; ++j) {
      const int l = std::clamp(nearest(iscale * x[j]), -32, 31);
      sxl += static_cast<double>(l) * x[j];
      sl2 += static_cast<double>(l) * l;
    }
    if (sl2 <= 0) continue;
    const auto scale = static_cast<float>(sxl / sl2);
    double err = 0;
    for (int j = 0; j < n; ++j) {
      const int l = std::clamp(nearest(x[j] / scale), -32, 31);
      const double diff = static_cast<double>(scale) * l - x[j];
      err += diff * diff;
    }
    if (best_err < 0 || err < best_err) {
      best_err = err;
      best = scale;
    }
  }
  return best;
}

void quant_q6_k(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    BlockQ6_K b{};
    float scales[16];
    float max_scale = 0, max_abs = 0;
    for (int s = 0; s < 16; ++s) {
      scales[s] = fit_symmetric(x + 16 * s, 16);
      if (std::fabs(scales[s]) > max_abs) {
        max_abs = std::fabs(scales[s]);
        max_scale = scales[s];
      }
    }
    uint8_t L[kQK_K] = {};
    if (max_abs > 0) {
      const float iscale = -128.0f / max_scale;
      b.d = fp32_to_fp16(1.0f / iscale);
      for (int s = 0; s < 16; ++s)
        b.scales[s] = static_cast<int8_t>(std::clamp(nearest(iscale * scales[s]), -128, 127));
      for (int s = 0; s < 16; ++s) {
        const float d = fp16_to_fp32(b.d) * static_cast<float>(b.scales[s]);
        for (int l = 0; l < 16; ++l)
          L[16 * s + l] = static_cast<uint8_t>(
              d != 0.0f ? std::clamp(nearest(x[16 * s + l] / d), -32, 31) + 32 : 32);
      }
    } else {
      std::fill(L, L + kQK_K, uint8_t{32});
    }
    for (int half = 0; half < 2; ++half) {
      const uint8_t* q = L + 128 * half;
      for (int l = 0; l < 32; ++l) {
        b.ql[64 * half + l] = static_cast<uint8_t>((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
        b.ql[64 * half + l + 32] =
            static_cast<uint8_t>((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
        b.qh[32 * half + l] =
            static_cast<uint8_t>((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) |
                                 ((q[l + 96] >> 4) << 6));
      }
    }
    store_block(dst, i, b);
  }
}

void quant_q8_k(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    BlockQ8_K b{};
    const float max = signed_absmax(x, kQK_K);
    if (max != 0.0f) {
      const float iscale = -127.0f / max;  // as ggml: the extreme element maps to -127, never -128
      for (int j = 0; j < kQK_K; ++j)
        b.qs[j] = static_cast<int8_t>(std::clamp(nearest(iscale * x[j]), -128, 127));
      for (int g = 0; g < kQK_K / 16; ++g) {
        int sum = 0;
        for (int l = 0; l < 16; ++l) sum += b.qs[16 * g + l];
        b.bsums[g] = static_cast<int16_t>(sum);
      }
      b.d = 1.0f / iscale;
    }
    store_block(dst, i, b);
  }
}

// Ternary: scale = absmax, trit = round(x / absmax) in {-1, 0, 1} (rounding half away from zero).
int ternary(float x, float id) {
  return std::clamp(static_cast<int>(std::lround(x * id)), -1, 1) + 1;
}

float absmax(const float* x, int n) {
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}

// Base-3 digits t[0..k) (first most significant, padded to 5 digits) stored as ceil(v * 256 / 243),
// so the decoder can pull each digit out with one multiply (see dequantize.cpp's trit()).
uint8_t pack_trits(const int* t, int k) {
  int v = 0;
  for (int n = 0; n < 5; ++n) v = v * 3 + (n < k ? t[n] : 0);
  return static_cast<uint8_t>((v * 256 + 242) / 243);
}

void quant_tq1_0(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    BlockTQ1_0 b{};
    const float d = absmax(x, kQK_K);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b.d = fp32_to_fp16(d);
    int t[5];
    for (int m = 0; m < 32; ++m) {  // elements n*32 + m
      for (int n = 0; n < 5; ++n) t[n] = ternary(x[n * 32 + m], id);
      b.qs[m] = pack_trits(t, 5);
    }
    for (int m = 0; m < 16; ++m) {  // elements 160 + n*16 + m
      for (int n = 0; n < 5; ++n) t[n] = ternary(x[160 + n * 16 + m], id);
      b.qs[32 + m] = pack_trits(t, 5);
    }
    for (int j = 0; j < 4; ++j) {  // elements 240 + n*4 + j
      for (int n = 0; n < 4; ++n) t[n] = ternary(x[240 + n * 4 + j], id);
      b.qh[j] = pack_trits(t, 4);
    }
    store_block(dst, i, b);
  }
}

void quant_tq2_0(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK_K) {
    BlockTQ2_0 b{};
    const float d = absmax(x, kQK_K);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    b.d = fp32_to_fp16(d);
    for (int j = 0; j < kQK_K / 4; j += 32)
      for (int m = 0; m < 32; ++m) {
        int q = 0;
        for (int l = 0; l < 4; ++l) q |= ternary(x[4 * j + 32 * l + m], id) << (2 * l);
        b.qs[j + m] = static_cast<uint8_t>(q);
      }
    store_block(dst, i, b);
  }
}

// ggml's choice: the exponent of the block's absmax less 2 (so 4 * 2^e, E2M1's value 4 with the
// doubling, is the absmax's power of two; values above 1.5x of it saturate at 6), each element the
// nearest E2M1 value (first on ties). ggml casts a negative exponent to uint8 without a check; a
// block whose absmax is below 2^-125 gets e = 0 here.
void quant_mxfp4(const float* x, void* dst, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQKMxfp4) {
    BlockMxfp4 b{};
    const float amax = absmax(x, kQKMxfp4);
    const float e = amax > 0.0f ? std::floor(std::log2(amax)) - 2.0f + 127.0f : 0.0f;
    b.e = static_cast<uint8_t>(std::clamp(e, 0.0f, 255.0f));
    const float d = mxfp4_scale_half(b.e);
    auto nearest = [d](float v) {
      int best = 0;
      float best_err = std::fabs(static_cast<float>(kMxfp4Values[0]) * d - v);
      for (int k = 1; k < 16; ++k) {
        const float err = std::fabs(static_cast<float>(kMxfp4Values[k]) * d - v);
        if (err < best_err) {
          best = k;
          best_err = err;
        }
      }
      return best;
    };
    for (int j = 0; j < kQKMxfp4 / 2; ++j)
      b.qs[j] = static_cast<uint8_t>(nearest(x[j]) | (nearest(x[j + kQKMxfp4 / 2]) << 4));
    store_block(dst, i, b);
  }
}

}  // namespace

bool can_quantize(TensorType t) {
  return can_dequantize(t);
}

void quantize_row(TensorType t, const float* src, void* dst, int64_t n) {
  const gguf::TypeTraits* tr = gguf::type_traits(t);
  if (!tr || !can_quantize(t))
    throw QuantError("quantize_row: type " + std::string(gguf::type_name(t)) + " is not supported");
  if (n < 0 || n % tr->block_size != 0)
    throw QuantError("quantize_row: " + std::to_string(n) + " elements of " +
                     std::string(tr->name) + " is not a non-negative multiple of the block size " +
                     std::to_string(tr->block_size));
  if (t != TensorType::F32 && t != TensorType::F16 && t != TensorType::BF16) {
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(src[i]))
        throw QuantError("quantize_row: element " + std::to_string(i) + " is not finite; " +
                         std::string(tr->name) + " cannot represent it");
  }
  const int64_t nb = n / tr->block_size;
  auto* bytes = static_cast<uint8_t*>(dst);
  switch (t) {
    case TensorType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case TensorType::F16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_fp16(src[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
      }
      return;
    case TensorType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_bf16(src[i]);
        std::memcpy(bytes + 2 * i, &h, 2);
      }
      return;
    case TensorType::Q4_0:
      quant_q4_0(src, dst, nb);
      return;
    case TensorType::Q4_1:
      quant_q4_1(src, dst, nb);
      return;
    case TensorType::Q5_0:
      quant_q5_0(src, dst, nb);
      return;
    case TensorType::Q5_1:
      quant_q5_1(src, dst, nb);
      return;
    case TensorType::Q8_0:
      quant_q8_0(src, dst, nb);
      return;
    case TensorType::Q4_K:
      quant_q4_k(src, dst, nb);
      return;
    case TensorType::Q5_K:
      quant_q5_k(src, dst, nb);
      return;
    case TensorType::Q6_K:
      quant_q6_k(src, dst, nb);
      return;
    case TensorType::Q8_K:
      quant_q8_k(src, dst, nb);
      return;
    case TensorType::TQ1_0:
      quant_tq1_0(src, dst, nb);
      return;
    case TensorType::TQ2_0:
      quant_tq2_0(src, dst, nb);
      return;
    case TensorType::MXFP4:
      quant_mxfp4(src, dst, nb);
      return;
    default:
      break;
  }
  throw QuantError("quantize_row: type " + std::string(gguf::type_name(t)) + " is not supported");
}

}  // namespace tessera::quant
