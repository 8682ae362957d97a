// Embedding lookup: out[t][:] = dequantized row ids[t] of a table stored in a ggml block format.
// Layout: table rows of `row_bytes` bytes back to back from byte offset table_off (ggml's on-disk
// layout: blocks need no alignment, so every multi-byte field is assembled from bytes); ids: int32
// per token; out[t][cols] f32 from element offset out_off. One work item per (block, token):
// global (blocks per row, n_tokens); float formats use blocks of 32 elements and may end short.
// An id outside [0, n_rows) writes NaNs, so a bad token id is visible rather than a wild read.
#include "common.clh"

inline ushort load_u16(__global const uchar* p) { return (ushort)(p[0] | (p[1] << 8)); }
inline uint load_u32(__global const uchar* p) {
  return (uint)p[0] | ((uint)p[1] << 8) | ((uint)p[2] << 16) | ((uint)p[3] << 24);
}

// IEEE half bits to float, subnormals and Inf/NaN included (no cl_khr_fp16, no alignment needs).
inline float half_bits_to_float(ushort h) {
  const uint sign = (uint)(h & 0x8000) << 16;
  const uint e = (h >> 10) & 0x1f;
  const uint m = h & 0x3ff;
  if (e == 0) {
    const float v = (float)m * 5.9604644775390625e-8f;  // m * 2^-24
    return sign ? -v : v;
  }
  if (e == 31) return as_float(sign | 0x7f800000u | (m << 13));
  return as_float(sign | ((e + 112) << 23) | (m << 13));
}
inline float load_half(__global const uchar* p) { return half_bits_to_float(load_u16(p)); }

// The block `b` of row ids[t]; null (and NaNs written) when the id is out of range.
#define EMBED_PROLOGUE(QK)                                                                    \
  const uint b = get_global_id(0);                                                            \
  const size_t t = get_global_id(1);                                                          \
  __global float* y = out + out_off + t * cols + (size_t)b * (QK);                            \
  const uint n_here = min((uint)(QK), cols - b * (QK));                                       \
  const int id = ids[ids_off + t];                                                            \
  if (id < 0 || (uint)id >= n_rows) {                                                         \
    for (uint j = 0; j < n_here; ++j) y[j] = NAN;                                             \
    return;                                                                                   \
  }                                                                                           \
  __global const uchar* row = table + table_off + (ulong)id * row_bytes;

#define EMBED_ARGS                                                                                 \
  __global const uchar *table, ulong table_off, ulong row_bytes, uint n_rows, __global const int *ids, \
      uint ids_off, __global float *out, uint out_off, uint cols

__kernel void embed_f32(EMBED_ARGS) {
  EMBED_PROLOGUE(32)
  __global const uchar* p = row + (size_t)b * 32 * 4;
  for (uint j = 0; j < n_here; ++j) y[j] = as_float(load_u32(p + 4 * j));
}

__kernel void embed_f16(EMBED_ARGS) {
  EMBED_PROLOGUE(32)
  __global const uchar* p = row + (size_t)b * 32 * 2;
  for (uint j = 0; j < n_here; ++j) y[j] = load_half(p + 2 * j);
}

__kernel void embed_bf16(EMBED_ARGS) {
  EMBED_PROLOGUE(32)
  __global const uchar* p = row + (size_t)b * 32 * 2;
  for (uint j = 0; j < n_here; ++j) y[j] = as_float((uint)load_u16(p + 2 * j) << 16);
}

// Q4_0 (18 bytes / 32): half d; 16 bytes, element j low nibble of qs[j], j+16 high nibble; (q-8)*d.
__kernel void embed_q4_0(EMBED_ARGS) {
  EMBED_PROLOGUE(32)
  __global const uchar* blk = row + (size_t)b * 18;
  const float d = load_half(blk);
  for (uint j = 0; j < 16; ++j) {
    const uchar q = blk[2 + j];
    y[j] = (float)((int)(q & 0xF) - 8) * d;
    y[j + 16] = (float)((int)(q >> 4) - 8) * d;
  }
}

// Q4_1 (20 bytes / 32): half d, half m; nibbles as Q4_0; q*d + m.
__kernel void embed_q4_1(EMBED_ARGS) {
  EMBED_PROLOGUE(32)
  __global const uchar* blk = row + (size_t)b * 20;
  const float d = load_half(blk);
  const float m = load_half(blk + 2);
  for (uint j = 0; j < 16; ++j) {
    const uchar q = blk[4 + j];
    y[j] = (float)(q & 0xF) * d + m;
    y[j + 16] = (float)(q >> 4) * d + m;
  }
}

// Q5_0 (22 bytes / 32): half d; u32 qh (5th bits: bit j for element j, bit j+16 for j+16); nibbles.
__kernel void embed_q5_0(EMBED_ARGS) {
  EMBED_PROLOGUE(32)
  __global const uchar* blk = row + (size_t)b * 22;
  const float d = load_half(blk);
  const uint qh = load_u32(blk + 2);
  for (uint j = 0; j < 16; ++j) {
    const uchar q = blk[6 + j];
    const int x0 = (int)((q & 0xF) | (((qh >> j) << 4) & 0x10)) - 16;
    const int x1 = (int)((q >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
    y[j] = (float)x0 * d;
    y[j + 16] = (float)x1 * d;
  }
}

// Q8_0 (34 bytes / 32): half d; 32 int8.
__kernel void embed_q8_0(EMBED_ARGS) {
  EMBED_PROLOGUE(32)
  __global const uchar* blk = row + (size_t)b * 34;
  const float d = load_half(blk);
  for (uint j = 0; j < 32; ++j) y[j] = (float)(char)blk[2 + j] * d;
}

// 6-bit scale and min j of a K-quant super-block (ggml's get_scale_min_k4).
inline void scale_min_k4(uint j, __global const uchar* q, float* sc, float* mn) {
  if (j < 4) {
    *sc = (float)(q[j] & 63);
    *mn = (float)(q[j + 4] & 63);
  } else {
    *sc = (float)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *mn = (float)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Q4_K (144 bytes / 256): half d, half dmin, 12 scale bytes, 128 nibble bytes; per 64 elements two
// sub-blocks (low nibbles, then high) with their own scale and min.
__kernel void embed_q4_k(EMBED_ARGS) {
  EMBED_PROLOGUE(256)
  __global const uchar* blk = row + (size_t)b * 144;
  const float d = load_half(blk);
  const float dmin = load_half(blk + 2);
  __global const uchar* scales = blk + 4;
  __global const uchar* q = blk + 16;
  for (uint g = 0; g < 4; ++g) {
    float sc, mn;
    scale_min_k4(2 * g, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(2 * g + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (uint l = 0; l < 32; ++l) {
      y[64 * g + l] = d1 * (float)(q[l] & 0xF) - m1;
      y[64 * g + 32 + l] = d2 * (float)(q[l] >> 4) - m2;
    }
    q += 32;
  }
}

// Q5_K (176 bytes / 256): as Q4_K plus 32 bytes of 5th bits (element 64g+l: bit 2g of qh[l],
// 64g+32+l: bit 2g+1).
__kernel void embed_q5_k(EMBED_ARGS) {
  EMBED_PROLOGUE(256)
  __global const uchar* blk = row + (size_t)b * 176;
  const float d = load_half(blk);
  const float dmin = load_half(blk + 2);
  __global const uchar* scales = blk + 4;
  __global const uchar* qh = blk + 16;
  __global const uchar* q = blk + 48;
  for (uint g = 0; g < 4; ++g) {
    float sc, mn;
    scale_min_k4(2 * g, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(2 * g + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    const uchar u1 = (uchar)(1u << (2 * g)), u2 = (uchar)(2u << (2 * g));
    for (uint l = 0; l < 32; ++l) {
      y[64 * g + l] = d1 * (float)((q[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
      y[64 * g + 32 + l] = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    }
    q += 32;
  }
}

// Q6_K (210 bytes / 256): 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, half d.
__kernel void embed_q6_k(EMBED_ARGS) {
  EMBED_PROLOGUE(256)
  __global const uchar* blk = row + (size_t)b * 210;
  __global const uchar* ql = blk;
  __global const uchar* qh = blk + 128;
  __global const char* sc = (__global const char*)(blk + 192);
  const float d = load_half(blk + 208);
  for (uint half_ = 0; half_ < 2; ++half_) {
    for (uint l = 0; l < 32; ++l) {
      const uint is = l / 16;
      const int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * (float)sc[is] * (float)q1;
      y[l + 32] = d * (float)sc[is + 2] * (float)q2;
      y[l + 64] = d * (float)sc[is + 4] * (float)q3;
      y[l + 96] = d * (float)sc[is + 6] * (float)q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}
