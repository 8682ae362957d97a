// Matmul over weights in ggml formats with f32 activations: y[t][r] = sum_c W[r][c] * x[t][c].
// One program per (format, variant); kernels per token tile: matmul_t{1,4,8}, experts_t{1,4,8},
// and dequantize (weights -> f32 rows, for the CLBlast GEMM path).
//
// Build macros (host/ops/device/matmul.cpp sets them):
//   FMT_*     weight format (matmul_formats.clh), repacked layout described there.
//   LANES     work items sharing one row group; they split the row's chunks, then reduce in local
//             memory. 1 on CPUs: each work item streams whole rows (what PoCL's cores want).
//   WG_ROWS   row groups per work group (local size = LANES * WG_ROWS).
//   RPW       rows per work item: they share each loaded chunk of x.
//   XQ_RPW    rows per work item of the prefill tiles on 8-bit x (X_Q8_TILES_ON; default 1).
//   VEC_ACC   1: float16 accumulators (maps to SIMD registers on CPUs); 0: scalar sums (GPUs).
// NDRange: dim 0 = ceil(rows / (RPW * WG_ROWS)) * LANES * WG_ROWS, dim 1 = work groups over token
// (or pair) tiles; each group loops over tiles group_id(1), + num_groups(1), ...
// x rows are `cols` floats apart, y rows `rows` floats apart (matmul_t: `ldy`, and `accumulate`
// adds to y instead of storing); offsets are in floats.
#include "common.clh"
#include "matmul_formats.clh"
#include "rows.clh"

#ifndef LANES
#define LANES 1
#endif
#ifndef WG_ROWS
#define WG_ROWS 16
#endif
#ifndef RPW
#define RPW 1
#endif
#ifndef XQ_RPW
#define XQ_RPW 1
#endif
#ifndef VEC_ACC
#define VEC_ACC 0
#endif
// Rows per item whose loads a GPU combine or routing tail issues at once.
#define COMBINE_BATCH 8

#if VEC_ACC
typedef float16 acc_t;
inline float acc_sum(float16 a) {
  const float8 s8 = a.lo + a.hi;
  const float4 s4 = s8.lo + s8.hi;
  return (s4.x + s4.y) + (s4.z + s4.w);
}
#define ACC_ADD(acc, w0, w1, x0, x1) acc += (w0) * (x0) + (w1) * (x1)
// Tiles of several tokens (independent sums per token): two fmas per chunk instead of a multiply,
// an fma and an add (prefill, 2-core machine: the expert and dense tiles ~11% less time). One
// token keeps ACC_ADD's single dependent add per chunk.
#define ACC_ADD_TT(TT, acc, w0, w1, x0, x1)                                                        \
  do {                                                                                             \
    if ((TT) > 1)                                                                                  \
      acc = fma(w0, x0, fma(w1, x1, acc));                                                         \
    else                                                                                           \
      ACC_ADD(acc, w0, w1, x0, x1);                                                                \
  } while (0)
#else
typedef float acc_t;
inline float acc_sum(float a) { return a; }
inline float dot16(float16 a, float16 b) {
  return (dot(a.s0123, b.s0123) + dot(a.s4567, b.s4567)) + (dot(a.s89ab, b.s89ab) + dot(a.scdef, b.scdef));
}
#define ACC_ADD(acc, w0, w1, x0, x1) acc += dot16(w0, x0) + dot16(w1, x1)
#define ACC_ADD_TT(TT, acc, w0, w1, x0, x1) ACC_ADD(acc, w0, w1, x0, x1)
#endif

// X_SWIGLU: each x row is [gate | up] (2 * cols floats) and the matmul's input row is
// silu(gate) * up (the activation folded into the down projection's loads, as act.cl computes it).
#ifdef X_SWIGLU
#define X_LD(cols) (2 * (ulong)(cols))
inline float x_at(__global const float* row, uint c, uint cols) {
  const float g = row[c];
  return g / (1.0f + exp(-g)) * row[cols + c];
}
#else
#define X_LD(cols) ((ulong)(cols))
#define x_at(row, c, cols) ((row)[c])
#endif

// 32 floats of x from p[c..c+31], zero beyond `cols` (only F32/F16/BF16 rows have a partial chunk).
inline void load_x(__global const float* p, uint c, uint cols, float16* x0, float16* x1) {
#ifdef X_SWIGLU
#ifdef PADDED_COLS
  if (c + CHUNK > cols) {
    float t[CHUNK];
    for (uint i = 0; i < CHUNK; ++i) t[i] = (c + i < cols) ? x_at(p, c + i, cols) : 0.0f;
    *x0 = vload16(0, t);
    *x1 = vload16(1, t);
    return;
  }
#endif
  const float16 g0 = vload16(0, p + c), g1 = vload16(1, p + c);
  *x0 = g0 / (1.0f + exp(-g0)) * vload16(0, p + cols + c);
  *x1 = g1 / (1.0f + exp(-g1)) * vload16(1, p + cols + c);
  return;
#endif
#ifdef PADDED_COLS
  if (c + CHUNK > cols) {
    float t[CHUNK];
    for (uint i = 0; i < CHUNK; ++i) t[i] = (c + i < cols) ? p[c + i] : 0.0f;
    *x0 = vload16(0, t);
    *x1 = vload16(1, t);
    return;
  }
#endif
  *x0 = vload16(0, p + c);
  *x1 = vload16(1, p + c);
}

// Iterates chunk k (block b, chunk sub of the block) over this work item's share of the row. One
// lane (CPUs): whole blocks in order with the chunks of a block unrolled, so a block's scales are
// loaded and unpacked once. Several lanes (GPUs): chunk k = lane, lane + LANES, ... (coalesced).
#if LANES == 1
// BLOCK_SCALED formats (matmul_formats.clh): runs of four blocks first, each block's unscaled dot
// products with x scaled once (VEC_ACC), then the loop below takes the remaining blocks from b.
#if defined(BLOCK_SCALED) && VEC_ACC
// One token, Q4_0: the nibbles unsigned (decode_block_u) and 8 (x . 1) taken off per block, x8
// shared by the rows (2-core machine: the decode's Q4_0 launches ~5% less time). Several tokens
// scale the decoded block once and keep the signed values.
#ifdef BLOCK_UNSIGNED8
#define DECODE_BLOCK_TT(TT, body, blk, w0, w1)                                                     \
  do {                                                                                             \
    if ((TT) == 1)                                                                                 \
      decode_block_u(body, blk, w0, w1);                                                           \
    else                                                                                           \
      decode_block_raw(body, blk, w0, w1);                                                         \
  } while (0)
#define X_OFFSET8(xa, xb) (((xa) + (xb)) * 8.0f)
#else
#define DECODE_BLOCK_TT(TT, body, blk, w0, w1) decode_block_raw(body, blk, w0, w1)
#define X_OFFSET8(xa, xb) ((float16)(0.0f))
#endif
#define TILE_BLOCKS_SCALED(TT)                                                                     \
  uint b0 = 0;                                                                                     \
  for (; b0 + 4 <= bpr; b0 += 4) {                                                                 \
    float4 d[RPW];                                                                                 \
    for (uint rr = 0; rr < RPW; ++rr) d[rr] = block_scales4(head, rblk[rr] + b0);                  \
    _Pragma("unroll") for (uint i = 0; i < 4; ++i) {                                               \
      float16 w0[RPW], w1[RPW];                                                                    \
      float di[RPW];                                                                               \
      for (uint rr = 0; rr < RPW; ++rr) {                                                          \
        DECODE_BLOCK_TT(TT, body, rblk[rr] + b0 + i, &w0[rr], &w1[rr]);                            \
        di[rr] = i == 0 ? d[rr].s0 : (i == 1 ? d[rr].s1 : (i == 2 ? d[rr].s2 : d[rr].s3));         \
        /* Several tokens: the block's weights scaled once, then two fmas per token. */            \
        if (TT > 1) {                                                                              \
          w0[rr] *= (float16)(di[rr]);                                                             \
          w1[rr] *= (float16)(di[rr]);                                                             \
        }                                                                                          \
      }                                                                                            \
      _Pragma("unroll") for (uint j = 0; j < TT; ++j) {                                            \
        float16 xa, xb;                                                                            \
        load_x(x + xrow[j], (b0 + i) * CHUNK, cols, &xa, &xb);                                     \
        const float16 x8 = TT == 1 ? X_OFFSET8(xa, xb) : (float16)(0.0f);                          \
        _Pragma("unroll") for (uint rr = 0; rr < RPW; ++rr) {                                      \
          if (TT > 1)                                                                              \
            acc[rr][j] = fma(w0[rr], xa, fma(w1[rr], xb, acc[rr][j]));                             \
          else                                                                                     \
            acc[rr][j] = fma(w0[rr] * xa + w1[rr] * xb - x8, (float16)(di[rr]), acc[rr][j]);       \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
  }
#define BLOCK_LOOP_START b0
#else
#define TILE_BLOCKS_SCALED(TT)
#define BLOCK_LOOP_START 0
#endif
#define CHUNK_LOOP_BEGIN                                                                           \
  for (uint b = BLOCK_LOOP_START; b < bpr; ++b) {                                                  \
    _Pragma("unroll") for (uint sub = 0; sub < CHUNKS_PER_BLOCK; ++sub) {                          \
      const uint k = b * CHUNKS_PER_BLOCK + sub;
#define CHUNK_LOOP_END }}
#else
#define CHUNK_LOOP_BEGIN                                                                           \
  for (uint k = lane; k < bpr * CHUNKS_PER_BLOCK; k += LANES) {                                    \
    const uint b = k / CHUNKS_PER_BLOCK, sub = k % CHUNKS_PER_BLOCK;
#define CHUNK_LOOP_END }
#endif

// Dot products of rows r0 .. r0+RPW-1 (clamped to rows-1; the caller stores only valid rows) of the
// matrix whose first block is mat_blk0 with TT rows of x (xrow[j] = float offset of the row), over
// this work item's share of chunks. Sums land in out[rr * TT + j]. `xs` is local scratch for x.
#if LANES == 1
// CPUs: each work item streams its rows; x comes straight from (cached) global memory. The loops
// over tokens and rows are unrolled so the accumulators stay in registers (PoCL otherwise keeps
// acc[][] on the stack: a load, add and store per token and chunk).
#define DEFINE_TILE(TT)                                                                            \
  inline void tile_##TT(__global const uchar* body, __global const uchar* head, ulong mat_blk0,   \
                        uint r0, uint rows, uint cols, uint bpr, __global const float* x,          \
                        const ulong* xrow, uint lane, float* out, __local float* xs) {             \
    acc_t acc[RPW][TT];                                                                            \
    _Pragma("unroll") for (uint rr = 0; rr < RPW; ++rr)                                            \
      _Pragma("unroll") for (uint j = 0; j < TT; ++j) acc[rr][j] = (acc_t)(0.0f);                  \
    ulong rblk[RPW];                                                                               \
    for (uint rr = 0; rr < RPW; ++rr) rblk[rr] = mat_blk0 + (ulong)min(r0 + rr, rows - 1) * bpr;  \
    TILE_BLOCKS_SCALED(TT)                                                                         \
    CHUNK_LOOP_BEGIN                                                                               \
      float16 w0[RPW], w1[RPW];                                                                    \
      for (uint rr = 0; rr < RPW; ++rr) decode_chunk(body, head, rblk[rr] + b, sub, &w0[rr], &w1[rr]); \
      _Pragma("unroll") for (uint j = 0; j < TT; ++j) {                                            \
        float16 xa, xb;                                                                            \
        load_x(x + xrow[j], k * CHUNK, cols, &xa, &xb);                                            \
        _Pragma("unroll") for (uint rr = 0; rr < RPW; ++rr)                                        \
          ACC_ADD_TT(TT, acc[rr][j], w0[rr], w1[rr], xa, xb);                                      \
      }                                                                                            \
    CHUNK_LOOP_END                                                                                 \
    _Pragma("unroll") for (uint rr = 0; rr < RPW; ++rr)                                            \
      _Pragma("unroll") for (uint j = 0; j < TT; ++j) out[rr * TT + j] = acc_sum(acc[rr][j]);      \
  }
#else
// GPUs: a step covers 8/TT x LANES chunks; lane l takes chunks k0 + s * LANES + l, so weight reads
// are coalesced. The step's x (those chunks x TT tokens, 8 x LANES chunks in all) is first loaded
// by the whole work group with coalesced reads into local memory, XPAD floats per chunk so that the
// lanes' reads of 32 consecutive floats hit distinct banks; every row group of the group shares it.
#define XPAD (CHUNK + 1)
#define DEFINE_TILE(TT)                                                                            \
  inline void tile_##TT(__global const uchar* body, __global const uchar* head, ulong mat_blk0,   \
                        uint r0, uint rows, uint cols, uint bpr, __global const float* x,          \
                        const ulong* xrow, uint lane, float* out, __local float* xs) {             \
    acc_t acc[RPW][TT];                                                                            \
    for (uint rr = 0; rr < RPW; ++rr)                                                              \
      for (uint j = 0; j < TT; ++j) acc[rr][j] = (acc_t)(0.0f);                                    \
    ulong rblk[RPW];                                                                               \
    for (uint rr = 0; rr < RPW; ++rr) rblk[rr] = mat_blk0 + (ulong)min(r0 + rr, rows - 1) * bpr;  \
    const uint nchunks = bpr * CHUNKS_PER_BLOCK;                                                   \
    const uint lid = get_local_id(0);                                                              \
    for (uint k0 = 0; k0 < nchunks; k0 += (8 / TT) * LANES) {                                      \
      const uint stage = min((uint)((8 / TT) * LANES), nchunks - k0) * CHUNK;                      \
      for (uint j = 0; j < TT; ++j) {                                                              \
        for (uint i = lid; i < stage; i += LANES * WG_ROWS) {                                      \
          const uint c = k0 * CHUNK + i;                                                           \
          xs[j * ((8 / TT) * LANES * XPAD) + (i / CHUNK) * XPAD + i % CHUNK] =                     \
              c < cols ? x_at(x + xrow[j], c, cols) : 0.0f;                                \
        }                                                                                          \
      }                                                                                            \
      barrier(CLK_LOCAL_MEM_FENCE);                                                                \
      _Pragma("unroll") for (uint s = 0; s < 8 / TT; ++s) {                                        \
        const uint k = k0 + s * LANES + lane;                                                      \
        if (k < nchunks) {                                                                         \
          const uint b = k / CHUNKS_PER_BLOCK, sub = k % CHUNKS_PER_BLOCK;                         \
          float16 w0[RPW], w1[RPW];                                                                \
          for (uint rr = 0; rr < RPW; ++rr)                                                        \
            decode_chunk(body, head, rblk[rr] + b, sub, &w0[rr], &w1[rr]);                         \
          for (uint j = 0; j < TT; ++j) {                                                          \
            __local const float* xl = xs + j * ((8 / TT) * LANES * XPAD) + (s * LANES + lane) * XPAD; \
            const float16 xa = vload16(0, xl), xb = vload16(0, xl + 16);                           \
            for (uint rr = 0; rr < RPW; ++rr) ACC_ADD(acc[rr][j], w0[rr], w1[rr], xa, xb);         \
          }                                                                                        \
        }                                                                                          \
      }                                                                                            \
      barrier(CLK_LOCAL_MEM_FENCE);                                                                \
    }                                                                                              \
    for (uint rr = 0; rr < RPW; ++rr)                                                              \
      for (uint j = 0; j < TT; ++j) out[rr * TT + j] = acc_sum(acc[rr][j]);                        \
  }
#endif

// (A one-token GPU tile reading x straight from global memory, without the staging barrier, was
// measured slower on an H200: tg 616 vs 803 t/s, pp512 2,917 vs 5,759 on the benchmark model.)
DEFINE_TILE(1)
DEFINE_TILE(4)
DEFINE_TILE(8)

#if X_Q8_ON
// One token with x in 8-bit blocks (matmul_formats.clh, X_Q8): `q8` holds `groups` runs of four
// blocks (Q8_GROUP_BYTES each), then their d_x (a float4 per run), then Q8_OFFSET d_x sum(q)
// (q8_fill). The blocks after the runs (bpr % 4) take the float path.
#define Q8_BYTES(groups) ((groups) * (Q8_GROUP_BYTES + 32))
// Runs first, first + step, ... (every item of the group its share: q8_fill; one item alone:
// q8_fill_one).
inline void q8_fill_from(__global const float* xr, uint cols, __local char* q8, uint groups,
                         uint first, uint step) {
  __local float4* qd = (__local float4*)(q8 + groups * Q8_GROUP_BYTES);
  __local float4* qo = qd + groups;
  for (uint g = first; g < groups; g += step) {
    float d[4], o[4];
    _Pragma("unroll") for (uint i = 0; i < 4; ++i) {
      float16 xa, xb;
      load_x(xr, (4 * g + i) * CHUNK, cols, &xa, &xb);
      const float2 r = q8_quantize_block(xa, xb, i, q8 + g * Q8_GROUP_BYTES);
      d[i] = r.x;
      o[i] = r.y;
    }
    qd[g] = (float4)(d[0], d[1], d[2], d[3]);
    qo[g] = (float4)(o[0], o[1], o[2], o[3]);
  }
}
inline void q8_fill(__global const float* xr, uint cols, __local char* q8, uint groups) {
  q8_fill_from(xr, cols, q8, groups, get_local_id(0), get_local_size(0));
}
inline void q8_fill_one(__global const float* xr, uint cols, __local char* q8, uint groups) {
  q8_fill_from(xr, cols, q8, groups, 0, 1);
}

// NR rows (first blocks rblk[0 .. NR - 1], nb blocks each) dotted with x into out[0 .. NR - 1]:
// the first `groups` runs of four blocks from q8, the rest from x (`cols` floats) in float.
#define Q8_ROWS(NR, rblk, nb, x, cols, q8, groups, out)                                             \
  do {                                                                                             \
    __local const float4* qd_ = (__local const float4*)((q8) + (groups) * Q8_GROUP_BYTES);         \
    __local const float4* qo_ = qd_ + (groups);                                                    \
    float16 acc_[NR];                                                                              \
    float4 off_[NR];                                                                               \
    _Pragma("unroll") for (uint k = 0; k < (NR); ++k) {                                            \
      acc_[k] = (float16)(0.0f);                                                                   \
      off_[k] = (float4)(0.0f);                                                                    \
    }                                                                                              \
    for (uint g = 0; g < (groups); ++g) {                                                          \
      const float4 dx = qd_[g], ox = qo_[g];                                                       \
      __local const char* xp = (q8) + g * Q8_GROUP_BYTES;                                          \
      _Pragma("unroll") for (uint k = 0; k < (NR); ++k) {                                          \
        const ulong blk = (rblk)[k] + 4 * g;                                                       \
        const float4 dw = block_scales4(head, blk);                                                \
        off_[k] = fma(dw, ox, off_[k]);                                                            \
        acc_[k] = fma(convert_float16(q8_dot4(body + blk * BODY_BYTES, xp)), q8_scales(dw * dx),   \
                      acc_[k]);                                                                    \
      }                                                                                            \
    }                                                                                              \
    for (uint b = 4 * (groups); b < (nb); ++b) {                                                   \
      float16 xa, xb;                                                                              \
      load_x(x, b * CHUNK, cols, &xa, &xb);                                                        \
      _Pragma("unroll") for (uint k = 0; k < (NR); ++k) {                                          \
        float16 w0, w1;                                                                            \
        decode_chunk(body, head, (rblk)[k] + b, 0, &w0, &w1);                                      \
        ACC_ADD(acc_[k], w0, w1, xa, xb);                                                          \
      }                                                                                            \
    }                                                                                              \
    _Pragma("unroll") for (uint k = 0; k < (NR); ++k)(out)[k] =                                    \
        acc_sum(acc_[k]) - ((off_[k].s0 + off_[k].s1) + (off_[k].s2 + off_[k].s3));                \
  } while (0)

// Rows r.s0 .. r.s3 (first blocks; nb blocks each) dotted with x (the expert FFN's rows).
inline float4 dot_rows4_q8(__global const uchar* body, __global const uchar* head, ulong4 r,
                           uint nb, __global const float* x, __local const char* q8, uint groups) {
  const ulong rr[4] = {r.s0, r.s1, r.s2, r.s3};
  float y[4];
  Q8_ROWS(4, rr, nb, x, nb * CHUNK, q8, groups, y);
  return (float4)(y[0], y[1], y[2], y[3]);
}

// The dense tile of one token (matmul_t1) from q8: rows r0 .. r0 + RPW - 1 (clamped).
inline void tile_q8(__global const uchar* body, __global const uchar* head, uint r0, uint rows,
                    uint cols, uint bpr, __global const float* xr, float* out,
                    __local const char* q8, uint groups) {
  ulong rblk[RPW];
  _Pragma("unroll") for (uint rr = 0; rr < RPW; ++rr) rblk[rr] = (ulong)min(r0 + rr, rows - 1) * bpr;
  Q8_ROWS(RPW, rblk, bpr, xr, cols, q8, groups, out);
}
// The dense kernels' local buffer and its runs (0: the float path: a row of more blocks than it
// holds). Tiles of one token quantize x into it (every item a share of the runs) between barriers.
#define Q8_LOCALS(TT)                                                                         \
  __local char q8buf[(TT) == 1 ? Q8_BYTES(X_Q8_MAX_GROUPS) : 1] __attribute__((aligned(64))); \
  const uint q8_groups = ((TT) == 1 && bpr / 4 <= X_Q8_MAX_GROUPS) ? bpr / 4 : 0;
#define Q8_TILE(TT, xr, out)                                             \
  if ((TT) == 1) {                                                       \
    barrier(CLK_LOCAL_MEM_FENCE);                                        \
    q8_fill(xr, cols, q8buf, q8_groups);                                 \
    barrier(CLK_LOCAL_MEM_FENCE);                                        \
  }                                                                      \
  if ((TT) == 1 && q8_groups > 0)                                        \
    tile_q8(body, head, r0, rows, cols, bpr, xr, out, q8buf, q8_groups); \
  else
#else
#define Q8_LOCALS(TT)
#define Q8_TILE(TT, xr, out)
#endif

// X_Q8_TILES_ON (Q4_0 and Q8_0 with X_Q8 and VNNI): prefill's tiles of several tokens on x in
// 8-bit blocks as well. A launch of quantize_xq first quantizes every x row once into a global
// buffer xq (XQ_ROW_BYTES per row: the runs' bytes in XQ_LO / XQ_HI order, then each run's d_x in
// lanes (block i's d in lanes 4i .. 4i + 3: the lanes of its integer sums), then XQ_OFFSET d_x
// sum(q) / 4 in the same lanes); the tiles (matmul_xq_t*, experts_xq_t*) read it with a run's
// weights unpacked once per tile: per token and run of four blocks two vpdpbusd, a conversion and
// two fmas, where the float tile takes eight fmas and eight loads of x. The blocks after the runs
// take the float path. (2-core Xeon with VNNI, the benchmark model's Q4_0 prefill of 128 tokens:
// the expert tiles 215 -> 154 ms, the dense ones 63 -> 41 ms; bench/END_TO_END.md.)
#if X_Q8_ON && X_Q8_VNNI_ON && (defined(FMT_Q4_0) || defined(FMT_Q8_0)) && LANES == 1 &&           \
    !defined(NO_X_Q8_TILES)
#define X_Q8_TILES_ON 1
// A run's bytes in xq for both formats as Q4_0's weights hold their nibbles: [elements 0-15 of
// blocks 0..3][elements 16-31 of blocks 0..3], so each 32-bit lane of a vpdpbusd sums four
// products of one block. Q8_0's weights are permuted to match (16-byte lanes, once per tile) and
// go in unsigned as w + 128 (w ^ 0x80): XQ_OFFSET d_w d_x sum(q) comes off each block, as Q4_0's 8.
#define XQ_LO(i) ((i) * 16)
#define XQ_HI(i) (64 + (i) * 16)
#if defined(FMT_Q4_0)
#define XQ_OFFSET 8.0f
#else
#define XQ_OFFSET 128.0f
#endif
#define XQ_ARG_DECL , __global const char* xq
#define XQ_ROW_BYTES(groups) ((ulong)(groups) * (Q8_GROUP_BYTES + 128))
// Work item (g, r): run g of x row r (rows of `cols` floats from x_off; groups = cols / 128).
__kernel void quantize_xq(__global const float* x, ulong x_off, uint cols, uint rows, uint groups,
                          __global char* xq) {
  const uint g = get_global_id(0), r = get_global_id(1);
  if (g >= groups || r >= rows) return;
  __global const float* xr = x + x_off + (ulong)r * X_LD(cols);
  __global char* row = xq + (ulong)r * XQ_ROW_BYTES(groups);
  float d[4], o[4];
  _Pragma("unroll") for (uint i = 0; i < 4; ++i) {
    float16 xa, xb;
    load_x(xr, (4 * g + i) * CHUNK, cols, &xa, &xb);
    char16 qa, qb;
    const float2 v = q8_quantize_vals(xa, xb, &qa, &qb);
    vstore16(qa, 0, row + g * Q8_GROUP_BYTES + XQ_LO(i));
    vstore16(qb, 0, row + g * Q8_GROUP_BYTES + XQ_HI(i));
    d[i] = v.x;
    o[i] = v.y * (XQ_OFFSET / 4.0f);
  }
  __global float* ds = (__global float*)(row + groups * Q8_GROUP_BYTES);
  vstore16(q8_scales((float4)(d[0], d[1], d[2], d[3])), g, ds);
  vstore16(q8_scales((float4)(o[0], o[1], o[2], o[3])), groups + g, ds);
}

// A run's weights as unsigned bytes in xq's order (lo: elements 0-15 of the four blocks, hi: 16-31).
inline void xq_weights(__global const uchar* q, q8_v64c* lo, q8_v64c* hi) {
#if defined(FMT_Q4_0)
  const q8_u64 w = *(__global const q8_u64*)q;
  *lo = (q8_v64c)(w & (q8_u64)(15));
  *hi = (q8_v64c)(w >> (q8_u64)(4));
#else
  // Blocks 0, 1 in a, 2, 3 in b (32 bytes each): 16-byte lanes 0, 2 of each are the low halves.
  // (Rows start 32-byte aligned: loads as q8_u64, 16-byte aligned.)
  typedef long xq_v8l __attribute__((__vector_size__(64)));
  const xq_v8l a = (xq_v8l)(*(__global const q8_u64*)q);
  const xq_v8l b = (xq_v8l)(*(__global const q8_u64*)(q + 64));
  const xq_v8l flip = {(long)0x8080808080808080L, (long)0x8080808080808080L,
                       (long)0x8080808080808080L, (long)0x8080808080808080L,
                       (long)0x8080808080808080L, (long)0x8080808080808080L,
                       (long)0x8080808080808080L, (long)0x8080808080808080L};
  *lo = (q8_v64c)(__builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13) ^ flip);
  *hi = (q8_v64c)(__builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15) ^ flip);
#endif
}

// Row rr of a work item of the xq tiles: r0 + rr (clamped), or in GLU_OUT programs of an even
// XQ_RPW = 2 k, gate rows r0 .. r0 + k - 1 and their up rows r0 + rows / 2 .. (see GLU_OUT).
#if defined(GLU_OUT) && XQ_RPW % 2 == 0
#define XQ_ROW(r0, rr, rows)                                                                       \
  (min((r0) + (rr) % (XQ_RPW / 2), (rows) / 2 - 1) + (rr) / (XQ_RPW / 2) * ((rows) / 2))
#else
#define XQ_ROW(r0, rr, rows) min((r0) + (rr), (rows) - 1)
#endif
// The xq tile of TT tokens: rows XQ_ROW(r0, 0 .. XQ_RPW - 1, rows) of the matrix from mat_blk0,
// token j's 8-bit x at xq + xqrow[j] (its float row at x + xrow[j], for the blocks after the runs).
#define DEFINE_TILE_XQ(TT)                                                                         \
  inline void tile_xq_##TT(__global const uchar* body, __global const uchar* head, ulong mat_blk0, \
                           uint r0, uint rows, uint cols, uint bpr, __global const float* x,       \
                           const ulong* xrow, __global const char* xq, const ulong* xqrow,         \
                           float* out) {                                                           \
    const uint groups = bpr / 4;                                                                   \
    float16 acc[XQ_RPW][TT];                                                                       \
    _Pragma("unroll") for (uint rr = 0; rr < XQ_RPW; ++rr)                                         \
        _Pragma("unroll") for (uint j = 0; j < TT; ++j) acc[rr][j] = (float16)(0.0f);              \
    ulong rblk[XQ_RPW];                                                                            \
    for (uint rr = 0; rr < XQ_RPW; ++rr) rblk[rr] = mat_blk0 + (ulong)XQ_ROW(r0, rr, rows) * bpr;  \
    for (uint g = 0; g < groups; ++g) {                                                            \
      q8_v64c wl[XQ_RPW], wh[XQ_RPW];                                                              \
      float16 dw[XQ_RPW];                                                                          \
      _Pragma("unroll") for (uint rr = 0; rr < XQ_RPW; ++rr) {                                     \
        const ulong blk = rblk[rr] + 4 * g;                                                        \
        xq_weights(body + blk * BODY_BYTES, &wl[rr], &wh[rr]);                                     \
        dw[rr] = q8_scales(block_scales4(head, blk));                                              \
      }                                                                                            \
      _Pragma("unroll") for (uint j = 0; j < TT; ++j) {                                            \
        __global const char* xp = xq + xqrow[j] + g * Q8_GROUP_BYTES;                              \
        const q8_v64c xl = (q8_v64c)(*(__global const q8_c64*)xp);                                 \
        const q8_v64c xh = (q8_v64c)(*(__global const q8_c64*)(xp + 64));                          \
        __global const float* ds =                                                                 \
            (__global const float*)(xq + xqrow[j] + groups * Q8_GROUP_BYTES);                      \
        const float16 dx = vload16(g, ds), ox = vload16(groups + g, ds);                           \
        _Pragma("unroll") for (uint rr = 0; rr < XQ_RPW; ++rr) {                                   \
          const int16 q = q8_dpbusd(q8_dpbusd((int16)(0), wl[rr], xl), wh[rr], xh);                \
          acc[rr][j] = fma(fma(convert_float16(q), dx, -ox), dw[rr], acc[rr][j]);                  \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
    for (uint b = 4 * groups; b < bpr; ++b) {                                                      \
      float16 w0[XQ_RPW], w1[XQ_RPW];                                                              \
      for (uint rr = 0; rr < XQ_RPW; ++rr)                                                         \
        decode_chunk(body, head, rblk[rr] + b, 0, &w0[rr], &w1[rr]);                               \
      _Pragma("unroll") for (uint j = 0; j < TT; ++j) {                                            \
        float16 xa, xb;                                                                            \
        load_x(x + xrow[j], b * CHUNK, cols, &xa, &xb);                                            \
        _Pragma("unroll") for (uint rr = 0; rr < XQ_RPW; ++rr)                                     \
            ACC_ADD(acc[rr][j], w0[rr], w1[rr], xa, xb);                                           \
      }                                                                                            \
    }                                                                                              \
    _Pragma("unroll") for (uint rr = 0; rr < XQ_RPW; ++rr)                                         \
        _Pragma("unroll") for (uint j = 0; j < TT; ++j) out[rr * TT + j] = acc_sum(acc[rr][j]);    \
  }
DEFINE_TILE_XQ(1)
DEFINE_TILE_XQ(4)
DEFINE_TILE_XQ(8)
#else
#define X_Q8_TILES_ON 0
#endif

// Kernel: whether this program runs one-token dense launches on x in 8-bit blocks (X_Q8_ON),
// whether with AVX-512 VNNI (X_Q8_VNNI_ON), and whether it has the prefill tiles on xq
// (X_Q8_TILES_ON).
__kernel void matmul_info(__global int* out) {
  out[0] = X_Q8_ON;
  out[1] = X_Q8_ON && X_Q8_VNNI_ON;
  out[2] = X_Q8_TILES_ON;
}

// Sums the LANES partial results of each output of this row group; returns true in the work item
// that holds the totals (lane 0). Every work item of the group must call it.
inline bool reduce_lanes(float* out, uint n, __local float* scratch) {
#if LANES > 1
  const uint lane = get_local_id(0) % LANES;
  const uint grp = get_local_id(0) / LANES;
  __local float* s = scratch + grp * (RPW * 8 * LANES);
  for (uint o = 0; o < n; ++o) s[o * LANES + lane] = out[o];
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint stride = LANES / 2; stride > 0; stride >>= 1) {
    if (lane < stride)
      for (uint o = 0; o < n; ++o) s[o * LANES + lane] += s[o * LANES + lane + stride];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  for (uint o = 0; o < n; ++o) out[o] = s[o * LANES];
  barrier(CLK_LOCAL_MEM_FENCE);
  return lane == 0;
#else
  return true;
#endif
}

// ROUTE_TAIL (dense kernels; the attention's output projection of decode-sized steps, added to the
// residual stream y): the start of the MoE block that follows, in the same launch. After storing a
// tile's rows, a work group writes, per token t, partials over its rows [rb, re) to rt_part
// [t][group][n_expert + 1]: for each expert e, sum_r router[e][r] * norm_w[r] * y[t][r], and last
// sum_r y[t][r]^2; then it fences and bumps the token's counter. The work group that brings it to
// num_groups(0) sums the partials, so logit e = (1 / sqrt(sum of squares / rows + eps)) * its sum
// (the router applied to RMSNorm(y[t]) * norm_w, by linearity), routes the token as route.cl does
// (ids / weights [t][k]), writes rt_xn[t] = RMSNorm(y[t]) * norm_w (the experts' input) and resets
// the counter for the next launch. No work group waits for another. One lane per row (the CPU
// shape): the last group's first item does the token alone (as the combine tail); several lanes
// (the GPU shape, on any device): its items share the sums (in xs, free after the tile), the
// routing (route_group_tail) and the row.
#ifdef ROUTE_TAIL
#include "route.clh"
#define ROUTE_MAX_EXPERT 512
#define ROUTE_ARGS                                                                                 \
  , __global const float *rt_norm_w, float rt_eps, __global float *rt_xn,                          \
      __global const float *rt_router, uint rt_ld, uint rt_n_expert, uint rt_k,                    \
      uint rt_sigmoid, uint rt_normalize, float rt_scale, __global int *rt_ids,                    \
      __global float *rt_w, __global float *rt_part, __global volatile int *rt_counters
#define ROUTE_LOCALS                                                                               \
  __local float rt_lg[(LANES > 1) ? 1 : ROUTE_MAX_EXPERT + 1];                                     \
  __local int rt_last[8];                                                                          \
  __local int rt_nlast;

// This work group's partials of token t (every item calls it).
inline void route_partials(uint t, uint rows, __global const float* yr,
                           __global const float* norm_w, __global const float* router, uint r_ld,
                           uint n_expert, __global float* part) {
  const uint rb = get_group_id(0) * (WG_ROWS * RPW), re = min(rb + WG_ROWS * RPW, rows);
  __global float* pt = part + ((ulong)t * get_num_groups(0) + get_group_id(0)) * (n_expert + 1);
  for (uint e = get_local_id(0); e <= n_expert; e += get_local_size(0)) {
    float s = 0.0f;
    if (e < n_expert) {
      __global const float* rr = router + (ulong)e * r_ld;
      for (uint r = rb; r < re; ++r) s += rr[r] * (norm_w[r] * yr[r]);
    } else {
      for (uint r = rb; r < re; ++r) s += yr[r] * yr[r];
    }
    pt[e] = s;
  }
}

// Token t's routing and norm by the last work group. lg: n_expert + 1 local floats; several lanes
// also red (max(local size, n_expert + 1) floats), rpart (max(local size, n_expert)), sel (k ints).
inline void route_token(uint t, uint rows, __global volatile const float* yr,
                        __global const float* norm_w, float eps, __global float* xn,
                        uint n_expert, uint k, uint sigmoid, uint normalize, float wscale,
                        __global int* ids, __global float* w, __global volatile const float* part,
                        __local float* lg, __local float* red, __local float* rpart,
                        __local int* sel) {
  const uint nwg = get_num_groups(0), ne1 = n_expert + 1;
  __global volatile const float* pt = part + (ulong)t * nwg * ne1;
  ids += (ulong)t * k;
  w += (ulong)t * k;
  xn += (ulong)t * rows;
#if LANES == 1
  if (get_local_id(0) != 0) return;
  for (uint e = 0; e < ne1; ++e) {
    float s = 0.0f;
    for (uint g = 0; g < nwg; ++g) s += pt[(ulong)g * ne1 + e];
    lg[e] = s;
  }
  const float scale = 1.0f / sqrt(lg[n_expert] / (float)rows + eps);
  for (uint e = 0; e < n_expert; ++e) lg[e] *= scale;
#define LG_TAIL(e) lg[e]
  ROUTE_SERIAL(LG_TAIL, n_expert, k, sigmoid, normalize, wscale, ids, w);
#undef LG_TAIL
  for (uint i = 0; i < rows; ++i) xn[i] = yr[i] * scale * norm_w[i];
#else
  const uint lid = get_local_id(0), L = get_local_size(0);
  // G items per sum (each over every G-th group's partial, eight loads in flight), then one item
  // per sum adds the G.
  const uint G = max(1u, L / ne1);
  for (uint idx = lid; idx < ne1 * G; idx += L) {
    const uint e = idx / G, g0 = idx % G;
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    uint g = g0;
    for (; g + 7 * G < nwg; g += 8 * G) {
      float v[8];
      for (uint u = 0; u < 8; ++u) v[u] = pt[(ulong)(g + u * G) * ne1 + e];
      for (uint u = 0; u < 8; ++u) s[u] += v[u];
    }
    for (; g < nwg; g += G) s[0] += pt[(ulong)g * ne1 + e];
    red[idx] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint e = lid; e < ne1; e += L) {
    float s = 0.0f;
    for (uint g = 0; g < G; ++g) s += red[e * G + g];
    lg[e] = s;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  const float scale = 1.0f / sqrt(lg[n_expert] / (float)rows + eps);
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint e = lid; e < n_expert; e += L) lg[e] *= scale;
  barrier(CLK_LOCAL_MEM_FENCE);
  route_group_tail(lg, rpart, sel, n_expert, k, sigmoid, normalize, wscale, ids, w);
  // The rows' volatile loads in batches (one wait per batch, as combine_token).
  for (uint i0 = lid; i0 < rows; i0 += COMBINE_BATCH * L) {
    float v[COMBINE_BATCH];
    for (uint u = 0; u < COMBINE_BATCH; ++u) {
      const uint i = i0 + u * L;
      v[u] = i < rows ? yr[i] : 0.0f;
    }
    for (uint u = 0; u < COMBINE_BATCH; ++u) {
      const uint i = i0 + u * L;
      if (i < rows) xn[i] = v[u] * scale * norm_w[i];
    }
  }
#endif
}

#if LANES > 1
#define ROUTE_SCRATCH                                                                              \
  __local float* lg = xs;                                                                          \
  __local float* red = xs + (rt_n_expert + 1);                                                     \
  __local float* rpart = red + max((uint)(LANES * WG_ROWS), rt_n_expert + 1);                      \
  __local int* sel = (__local int*)(rpart + max((uint)(LANES * WG_ROWS), rt_n_expert));
#else
#define ROUTE_SCRATCH                                                                              \
  __local float* lg = rt_lg;                                                                       \
  __local float* red = rt_lg;                                                                      \
  __local float* rpart = rt_lg;                                                                    \
  __local int* sel = (__local int*)rt_lg;
#endif
#define ROUTE_AFTER(t0, TT)                                                                        \
  barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);                                             \
  for (uint j = 0; j < (TT) && (t0) + j < n_tokens; ++j)                                           \
    route_partials((t0) + j, rows, y + y_off + (ulong)((t0) + j) * ldy, rt_norm_w, rt_router,      \
                   rt_ld, rt_n_expert, rt_part);                                                   \
  barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);                                             \
  if (get_local_id(0) == 0) {                                                                      \
    mem_fence(CLK_GLOBAL_MEM_FENCE);                                                               \
    int last = 0;                                                                                  \
    for (uint j = 0; j < (TT) && (t0) + j < n_tokens; ++j)                                         \
      if (atomic_inc(rt_counters + (t0) + j) == (int)get_num_groups(0) - 1) {                      \
        atomic_xchg(rt_counters + (t0) + j, 0);                                                    \
        rt_last[last++] = (int)((t0) + j);                                                         \
      }                                                                                            \
    rt_nlast = last;                                                                               \
    mem_fence(CLK_GLOBAL_MEM_FENCE);                                                               \
  }                                                                                                \
  barrier(CLK_LOCAL_MEM_FENCE);                                                                    \
  {                                                                                                \
    ROUTE_SCRATCH                                                                                  \
    for (int i = 0; i < rt_nlast; ++i) {                                                           \
      const uint t = (uint)rt_last[i];                                                             \
      route_token(t, rows, (__global volatile const float*)(y + y_off + (ulong)t * ldy),           \
                  rt_norm_w, rt_eps, rt_xn, rt_n_expert, rt_k, rt_sigmoid, rt_normalize, rt_scale, \
                  rt_ids, rt_w, (__global volatile const float*)rt_part, lg, red, rpart, sel);     \
      barrier(CLK_LOCAL_MEM_FENCE);                                                                \
    }                                                                                              \
  }                                                                                                \
  ROUTED_HOOK(rt_nlast);                                                                           \
  barrier(CLK_LOCAL_MEM_FENCE)
// What a work group does after routing its tokens (n of them): nothing, but in matmul_route_ffn.
#define ROUTED_HOOK(n) (void)0
#else
#define ROUTE_ARGS
#define ROUTE_LOCALS
#define ROUTE_AFTER(t0, TT) (void)0
#endif

// Dense: tokens t0 .. t0+TT-1 of x (clamped to n_tokens-1, stored only when valid), R rows per item
// (RPW, or XQ_RPW for the xq tiles; R > RPW only with one lane: the scratch holds RPW's).
#define DEFINE_MATMUL_K(TT, R, NAME, XQ_ARG, XQ_ROWS, TILE)                                   \
  __kernel __attribute__((reqd_work_group_size(LANES * WG_ROWS, 1, 1))) void NAME(            \
      __global const uchar* body, __global const uchar* head, uint rows, uint cols, uint bpr, \
      __global const float* x, ulong x_off, __global float* y, ulong y_off, uint n_tokens,    \
      uint ldy, uint accumulate ROUTE_ARGS XQ_ARG) {                                          \
    MATMUL_BODY(TT, R, XQ_ROWS, TILE)                                                         \
  }
// The body of a dense kernel (DEFINE_MATMUL_K's arguments in scope).
#define MATMUL_BODY(TT, R, XQ_ROWS, TILE)                                                          \
  __local float scratch[(LANES > 1) ? WG_ROWS * RPW * 8 * LANES : 1];                              \
  __local float xs[(LANES > 1) ? 8 * LANES * (CHUNK + 1) : 1];                                     \
  ROUTE_LOCALS                                                                                     \
  Q8_LOCALS(TT)                                                                                    \
  const uint lane = get_local_id(0) % LANES;                                                       \
  const uint r0 = (get_group_id(0) * WG_ROWS + get_local_id(0) / LANES) * (R);                     \
  const uint ntiles = (n_tokens + TT - 1) / TT;                                                    \
  for (uint tile = get_group_id(1); tile < ntiles; tile += get_num_groups(1)) {                    \
    const uint t0 = tile * TT;                                                                     \
    ulong xrow[TT];                                                                                \
    for (uint j = 0; j < TT; ++j) xrow[j] = x_off + (ulong)min(t0 + j, n_tokens - 1) * X_LD(cols); \
    float out[(R)*TT];                                                                             \
    XQ_ROWS                                                                                        \
    TILE;                                                                                          \
    if (reduce_lanes(out, (R)*TT, scratch)) {                                                      \
      for (uint rr = 0; rr < (R); ++rr)                                                            \
        for (uint j = 0; j < TT; ++j)                                                              \
          if (r0 + rr < rows && t0 + j < n_tokens) {                                               \
            __global float* yp = y + y_off + (ulong)(t0 + j) * ldy + r0 + rr;                      \
            *yp = accumulate ? *yp + out[rr * TT + j] : out[rr * TT + j];                          \
          }                                                                                        \
    }                                                                                              \
    ROUTE_AFTER(t0, TT);                                                                           \
  }

#define DEFINE_MATMUL(TT)                       \
  DEFINE_MATMUL_K(TT, RPW, matmul_t##TT, , ,    \
                  Q8_TILE(TT, x + xrow[0], out) \
                      tile_##TT(body, head, 0, r0, rows, cols, bpr, x, xrow, lane, out, xs))
DEFINE_MATMUL(1)
DEFINE_MATMUL(4)
DEFINE_MATMUL(8)
// The dense tiles on xq (prefill; the host launches them without the routing tail).
#if X_Q8_TILES_ON && !defined(ROUTE_TAIL)
#define XQ_DENSE_ROWS(TT) \
  ulong xqrow[TT];        \
  for (uint j = 0; j < TT; ++j) xqrow[j] = (ulong)min(t0 + j, n_tokens - 1) * XQ_ROW_BYTES(bpr / 4);
#define DEFINE_MATMUL_XQ(TT)                                                   \
  DEFINE_MATMUL_K(TT, XQ_RPW, matmul_xq_t##TT, XQ_ARG_DECL, XQ_DENSE_ROWS(TT), \
                  tile_xq_##TT(body, head, 0, r0, rows, cols, bpr, x, xrow, xq, xqrow, out))
DEFINE_MATMUL_XQ(4)
DEFINE_MATMUL_XQ(8)
#endif

// GLU_OUT (experts only; RPW 1, WG_ROWS even): the weight is gate and up stacked (rows = 2 ff per
// expert: gate rows, then up rows), and y rows of ff take silu(gate) * up (act.cl's SwiGLU): the
// activation in the launch that computes its inputs. One row per item (R 1): the first half of a
// work group's row groups computes gate rows g0 .. g0 + WG_ROWS/2 - 1, the second half the same up
// rows, and the up sums go through local memory to the gate side. An even R = 2 k (the xq tiles
// with an even XQ_RPW; one lane): item i of work group g computes gate rows (g WG_ROWS + i) k ..
// + k - 1 and their up rows in one tile (XQ_ROW), sharing x's loads, and stores the products.
#ifdef GLU_OUT
#if RPW != 1 || WG_ROWS % 2 != 0 || (XQ_RPW > 1 && XQ_RPW % 2 != 0)
#error "GLU_OUT needs RPW 1, XQ_RPW 1 or even, and an even WG_ROWS"
#endif
#define GLU_LOCALS __local float glu_up[(WG_ROWS / 2) * 8];
#define EXPERT_ROW0(R)                                                                             \
  const uint grp = get_local_id(0) / LANES;                                                        \
  const bool gate_side = (R) > 1 || grp < WG_ROWS / 2;                                             \
  const uint gr = (R) > 1 ? (get_group_id(0) * WG_ROWS + grp) * ((R) / 2)                          \
                           : get_group_id(0) * (WG_ROWS / 2) +                                     \
                                 (gate_side ? grp : grp - WG_ROWS / 2);                            \
  const uint r0 = gate_side ? gr : gr + rows / 2;
// (R expands to a number before it is pasted: the one-row form's barriers stay out of the others.)
#define STORE_EXPERT_ROWS(TT, R) GLU_STORE(TT, R)
#define GLU_STORE(TT, R) GLU_STORE_##R(TT)
#define GLU_STORE_PAIRS(TT, K)                                                                     \
  if (reduce_lanes(out, 2 * (K) * TT, scratch))                                                    \
    for (uint i = 0; i < (K) && gr + i < rows / 2; ++i)                                            \
      for (uint j = 0; j < nj; ++j) {                                                              \
        const float g = out[i * TT + j], u = out[((K) + i) * TT + j];                              \
        y[y_off + (ulong)(p + j) * (rows / 2) + gr + i] = ok ? g / (1.0f + exp(-g)) * u : NAN;     \
      }
#define GLU_STORE_2(TT) GLU_STORE_PAIRS(TT, 1)
#define GLU_STORE_4(TT) GLU_STORE_PAIRS(TT, 2)
#define GLU_STORE_6(TT) GLU_STORE_PAIRS(TT, 3)
#define GLU_STORE_8(TT) GLU_STORE_PAIRS(TT, 4)
#define GLU_STORE_1(TT)                                                                            \
  if (reduce_lanes(out, TT, scratch) && !gate_side)                                                \
    for (uint j = 0; j < TT; ++j) glu_up[(grp - WG_ROWS / 2) * TT + j] = out[j];                   \
  barrier(CLK_LOCAL_MEM_FENCE);                                                                    \
  if (lane == 0 && gate_side && gr < rows / 2)                                                     \
    for (uint j = 0; j < nj; ++j) {                                                                \
      const float g = out[j], u = glu_up[grp * TT + j];                                            \
      y[y_off + (ulong)(p + j) * (rows / 2) + gr] = ok ? g / (1.0f + exp(-g)) * u : NAN;           \
    }                                                                                              \
  barrier(CLK_LOCAL_MEM_FENCE)
#else
#define GLU_LOCALS
#define EXPERT_ROW0(R)                                                                             \
  const uint r0 = (get_group_id(0) * WG_ROWS + get_local_id(0) / LANES) * (R);
#define STORE_EXPERT_ROWS(TT, R)                                                                   \
  if (reduce_lanes(out, (R) * TT, scratch))                                                        \
    for (uint rr = 0; rr < (R); ++rr)                                                              \
      for (uint j = 0; j < nj; ++j)                                                                \
        if (r0 + rr < rows) y[y_off + (ulong)(p + j) * rows + r0 + rr] = ok ? out[rr * TT + j] : NAN
#endif

// COMBINE_TAIL (experts only, not with GLU_OUT; the down projection of decode-sized steps): the
// MoE combine in the launch that computes its rows. Pairs are in token order (pair p is entry p of
// the combine: token ctok[p], router weight cw[p]; token t's pairs are [coff[t], coff[t+1])).
// After storing a tile's rows a work group fences and bumps the counter of each pair's token; the
// work group that brings a token's count to num_groups(0) x its pairs (every row group of every
// pair written) reads the token's rows back through a volatile pointer and writes
// cx[t] (+)= sum_p cw[p] * y[p] (accumulate: the residual stream; else a partial sum), then, with
// use_norm, cxn[t] = RMSNorm(cx[t]) * norm_w (the next layer's input norm), and resets the counter
// for the next launch. Work group (0, 0) also writes the tokens that have no pairs. No work group
// waits for another, so nothing depends on how many run at once. The local size must be a power
// of two (the norm's reduction).
#ifdef COMBINE_TAIL
#define COMBINE_ARGS                                                                               \
  , __global float *cx, __global const float *cw, __global const int *coff,                        \
      __global const int *ctok, uint c_tokens, uint accumulate, __global const float *norm_w,      \
      uint use_norm, float eps, __global float *cxn, __global volatile int *counters
#define COMBINE_LOCALS                                                                             \
  __local float cscratch[LANES * WG_ROWS];                                                         \
  __local int clast[8];                                                                            \
  __local int nlast;
// Token t's combine (and norm) by the work group. CPUs: its first item alone (PoCL runs the group
// on one core anyway; no barrier inside the loop over the group's tokens, which PoCL 3.1 miscompiled
// into a crash); GPUs: the items share the row and reduce the squares in local memory.
inline void combine_token(uint t, uint n, __global volatile const float* y, ulong y_off,
                          __global float* x, __global const float* w, __global const int* off,
                          uint accumulate, __global const float* norm_w, uint use_norm, float eps,
                          __global float* xn, __local float* scratch) {
  const int begin = off[t], end = off[t + 1];
  __global float* xr = x + (ulong)t * n;
  SquareSum sq = {0.0f, 0.0f};
#ifdef DEVICE_IS_CPU
  if (get_local_id(0) != 0) return;
  for (uint i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (int p = begin; p < end; ++p) acc += w[p] * y[y_off + (ulong)p * n + i];
    const float v = accumulate ? xr[i] + acc : acc;
    xr[i] = v;
    add_square(&sq, v);
  }
#else
  // The item's rows i = lid + u L in batches of COMBINE_BATCH: a pair's volatile loads of the
  // batch are issued together, so the tail waits once per pair and batch, not once per row (the
  // sums and the squares keep the one-row-at-a-time order).
  const uint lid = get_local_id(0), L = get_local_size(0);
  for (uint i0 = lid; i0 < n; i0 += COMBINE_BATCH * L) {
    float acc[COMBINE_BATCH];
    for (uint u = 0; u < COMBINE_BATCH; ++u) acc[u] = 0.0f;
    for (int p = begin; p < end; ++p) {
      const float wp = w[p];
      __global volatile const float* yp = y + y_off + (ulong)p * n;
      float v[COMBINE_BATCH];
      for (uint u = 0; u < COMBINE_BATCH; ++u) {
        const uint i = i0 + u * L;
        v[u] = i < n ? yp[i] : 0.0f;
      }
      for (uint u = 0; u < COMBINE_BATCH; ++u) acc[u] += wp * v[u];
    }
    for (uint u = 0; u < COMBINE_BATCH; ++u) {
      const uint i = i0 + u * L;
      if (i < n) {
        const float v = accumulate ? xr[i] + acc[u] : acc[u];
        xr[i] = v;
        add_square(&sq, v);
      }
    }
  }
#endif
  if (!use_norm) return;
#ifdef DEVICE_IS_CPU
  const float scale = 1.0f / sqrt(sq.sum / (float)n + eps);
  for (uint i = 0; i < n; ++i) xn[(ulong)t * n + i] = xr[i] * scale * norm_w[i];
#else
  const float scale = rms_scale(sq, n, eps, scratch);
  FOR_ROW(i, n) xn[(ulong)t * n + i] = xr[i] * scale * norm_w[i];
#endif
}
#define COMBINE_TOKEN(t)                                                                           \
  combine_token((t), rows, (__global volatile const float*)y, y_off, cx, cw, coff, accumulate,     \
                norm_w, use_norm, eps, cxn, cscratch)
#define COMBINE_EMPTY_TOKENS                                                                       \
  if (get_group_id(0) == 0 && get_group_id(1) == 0)                                                \
    for (uint t = 0; t < c_tokens; ++t)                                                            \
      if (coff[t + 1] == coff[t]) COMBINE_TOKEN(t);
#define COMBINE_AFTER(p, nj)                                                                       \
  barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);                                             \
  if (get_local_id(0) == 0) {                                                                      \
    mem_fence(CLK_GLOBAL_MEM_FENCE);                                                               \
    int last = 0;                                                                                  \
    for (uint j = 0; j < (nj); ++j) {                                                              \
      const int t = ctok[(p) + j];                                                                 \
      if (t < 0 || (uint)t >= c_tokens) continue;                                                  \
      const int want = (int)get_num_groups(0) * (coff[t + 1] - coff[t]);                           \
      if (atomic_inc(counters + t) == want - 1) {                                                  \
        atomic_xchg(counters + t, 0);                                                              \
        clast[last++] = t;                                                                         \
      }                                                                                            \
    }                                                                                              \
    nlast = last;                                                                                  \
    mem_fence(CLK_GLOBAL_MEM_FENCE);                                                               \
  }                                                                                                \
  barrier(CLK_LOCAL_MEM_FENCE);                                                                    \
  for (int i = 0; i < nlast; ++i) COMBINE_TOKEN((uint)clast[i]);                                   \
  barrier(CLK_LOCAL_MEM_FENCE)
#ifdef GLU_OUT
#error "COMBINE_TAIL is for the down projection, not with GLU_OUT"
#endif
#else
#define COMBINE_ARGS
#define COMBINE_LOCALS
#define COMBINE_EMPTY_TOKENS
#define COMBINE_AFTER(p, nj) (void)0
#endif

// Stacked experts: output row p (of n_pairs) = expert pair_expert[p] times x row pair_token[p].
// The pairs are cut into chunks of up to TT pairs of one expert, aligned to the start of each run
// of equal expert ids (the host sorts pairs by expert, so a run is all of an expert's pairs):
// tile t's work group runs the chunks that start in pairs [t TT, t TT + TT). Each chunk decodes
// the weights once for all its pairs (the TT-token tile, or the 4-token one for 2-4 pairs, with
// the last pair's row repeated), a chunk of one pair the one-token tile. An out-of-range expert or
// token id makes the output row NaN, so the error is visible instead of reading foreign memory.
#define DEFINE_EXPERTS_K(TT, R, NAME, XQ_ARG, XQ_ROWS, TILE)                                   \
  __kernel __attribute__((reqd_work_group_size(LANES * WG_ROWS, 1, 1))) void NAME(             \
      __global const uchar* body, __global const uchar* head, uint rows, uint cols, uint bpr,  \
      __global const float* x, ulong x_off, uint x_rows, __global float* y, ulong y_off,       \
      __global const int* pair_token, __global const int* pair_expert, uint n_pairs,           \
      uint n_expert COMBINE_ARGS XQ_ARG) {                                                     \
    __local float scratch[(LANES > 1) ? WG_ROWS * RPW * 8 * LANES : 1];                        \
    __local float xs[(LANES > 1) ? 8 * LANES * (CHUNK + 1) : 1];                               \
    const uint lane = get_local_id(0) % LANES;                                                 \
    GLU_LOCALS                                                                                 \
    COMBINE_LOCALS                                                                             \
    EXPERT_ROW0(R)                                                                             \
    COMBINE_EMPTY_TOKENS                                                                       \
    const uint ntiles = (n_pairs + TT - 1) / TT;                                               \
    for (uint tile = get_group_id(1); tile < ntiles; tile += get_num_groups(1)) {              \
      const uint p0 = tile * TT;                                                               \
      const uint pend = p0 + min((uint)TT, n_pairs - p0);                                      \
      uint first = p0; /* this group's first chunk start (its chunks may end past pend) */     \
      if (TT > 1) {                                                                            \
        const int e0 = pair_expert[p0];                                                        \
        uint rs = p0; /* the start of p0's run, then its first chunk start >= p0 or its end */ \
        while (rs > 0 && pair_expert[rs - 1] == e0) --rs;                                      \
        const uint aligned = rs + (p0 - rs + TT - 1) / TT * TT;                                \
        while (first < aligned && first < n_pairs && pair_expert[first] == e0) ++first;        \
      }                                                                                        \
      for (uint p = first, nj = 1; p < pend; p += nj) {                                        \
        const int e = pair_expert[p];                                                          \
        for (nj = 1; nj < TT && p + nj < n_pairs && pair_expert[p + nj] == e;) ++nj;           \
        bool ok = e >= 0 && (uint)e < n_expert;                                                \
        ulong xrow[TT], xqrow[TT];                                                             \
        for (uint j = 0; j < TT; ++j) {                                                        \
          const int tk = pair_token[p + min(j, nj - 1)];                                       \
          ok = ok && tk >= 0 && (uint)tk < x_rows;                                             \
          xrow[j] = x_off + (ulong)clamp(tk, 0, (int)x_rows - 1) * X_LD(cols);                 \
          XQ_ROWS                                                                              \
        }                                                                                      \
        const ulong blk0 = (ulong)clamp(e, 0, (int)n_expert - 1) * rows * bpr;                 \
        float out[(R) * TT];                                                                   \
        if (nj > 1 && (TT < 8 || nj > 4)) {                                                    \
          TILE(TT, out);                                                                       \
        } else if (nj > 1) { /* TT 8, a run of 2-4: the 4-token tile */                        \
          float o4[(R) * 4];                                                                   \
          TILE(4, o4);                                                                         \
          for (uint rr = 0; rr < (R); ++rr)                                                    \
            for (uint j = 0; j < 4 && j < TT; ++j) out[rr * TT + j] = o4[rr * 4 + j];          \
        } else {                                                                               \
          TILE(1, out);                                                                        \
          for (uint rr = (R); rr-- > 0;) out[rr * TT] = out[rr];                               \
        }                                                                                      \
        STORE_EXPERT_ROWS(TT, R);                                                              \
        COMBINE_AFTER(p, nj);                                                                  \
      }                                                                                        \
    }                                                                                          \
  }

#define EXPERT_TILE(T, o) tile_##T(body, head, blk0, r0, rows, cols, bpr, x, xrow, lane, o, xs)
#define DEFINE_EXPERTS(TT) DEFINE_EXPERTS_K(TT, RPW, experts_t##TT, , , EXPERT_TILE)
DEFINE_EXPERTS(1)
DEFINE_EXPERTS(4)
DEFINE_EXPERTS(8)
// The expert tiles on xq (prefill: x rows quantized by quantize_xq; not with the combine tail or
// X_SWIGLU, which the host launches on float x).
#if X_Q8_TILES_ON && !defined(COMBINE_TAIL) && !defined(X_SWIGLU)
#define XQ_EXPERT_ROWS xqrow[j] = (ulong)clamp(tk, 0, (int)x_rows - 1) * XQ_ROW_BYTES(bpr / 4);
#define EXPERT_XQ(T, o) tile_xq_##T(body, head, blk0, r0, rows, cols, bpr, x, xrow, xq, xqrow, o)
#define DEFINE_EXPERTS_XQ(TT) \
  DEFINE_EXPERTS_K(TT, XQ_RPW, experts_xq_t##TT, XQ_ARG_DECL, XQ_EXPERT_ROWS, EXPERT_XQ)
DEFINE_EXPERTS_XQ(1)
DEFINE_EXPERTS_XQ(4)
DEFINE_EXPERTS_XQ(8)
#endif

// Dequantizes rows [row0, row0 + n_rows) (of all stacked matrices' rows) into out (row-major, `cols` floats per
// row, starting at out_off): one chunk of 32 per work item. Feeds CLBlast's SGEMM for big prefill.
__kernel void dequantize(__global const uchar* body, __global const uchar* head, uint rows, uint cols,
                         uint bpr, uint row0, uint n_rows, __global float* out, ulong out_off) {
  const uint cpr = bpr * CHUNKS_PER_BLOCK;
  const ulong i = get_global_id(0);
  if (i >= (ulong)n_rows * cpr) return;
  const uint r = (uint)(i / cpr), k = (uint)(i % cpr);
  float16 w0, w1;
  decode_chunk(body, head, (ulong)(row0 + r) * bpr + k / CHUNKS_PER_BLOCK, k % CHUNKS_PER_BLOCK, &w0,
               &w1);
  __global float* o = out + out_off + (ulong)r * cols + (ulong)k * CHUNK;
  const uint c = k * CHUNK;
  if (c + CHUNK <= cols) {
    vstore16(w0, 0, o);
    vstore16(w1, 1, o);
  } else {
    float t[CHUNK];
    vstore16(w0, 0, t);
    vstore16(w1, 1, t);
    for (uint e = 0; c + e < cols; ++e) o[e] = t[e];
  }
}

// EXPERT_FFN (CPUs, decode-sized steps): a MoE layer's experts in one launch: gate|up, SwiGLU,
// down and the combine (+ the next layer's norm), where run_experts_glu + run_experts_combine
// take two (on PoCL every launch is a fork/join over all threads). The gate|up and down weights
// share the program's format. Work group (s, p), one work item: pair p's h values of slice s
// (down's column blocks [s nb / S, (s + 1) nb / S), nb = down's blocks per row) from its gate and
// up rows, into h (ff floats per pair), then that slice's share of every down row into part
// ([pair][slice][n_embd]). Then, as COMBINE_TAIL, the work group that brings its token's counter
// to S x the token's pairs sums them: cx[t] (+)= sum_p cw[p] sum_s part[p][s], and with use_norm
// cxn[t] = RMSNorm(cx[t]) * norm_w. Work group (0, 0) also writes the tokens with no pair. The
// host keeps n_embd and ff multiples of 32 (no partial chunk). An out-of-range expert or token id
// makes the pair's share NaN.
#ifdef EXPERT_FFN
// Four rows (first blocks r.s0 .. r.s3), blocks r.sK .. r.sK + nb - 1 each, dotted with
// x[0 .. nb * BLOCK_ELEMS): the rows share the loads of x and keep four independent sums in
// flight (one row's chain of dependent fmas alone measured 21% slower than the two-launch path on
// the 2-core machine).
inline float4 dot_blocks4(__global const uchar* body, __global const uchar* head, ulong4 r, uint nb,
                          __global const float* x) {
  acc_t acc[4];
  _Pragma("unroll") for (uint k = 0; k < 4; ++k) acc[k] = (acc_t)(0.0f);
  const ulong rr[4] = {r.s0, r.s1, r.s2, r.s3};
  uint b = 0;
#if defined(BLOCK_SCALED) && VEC_ACC
  for (; b + 4 <= nb; b += 4) {
    float4 d[4];
    _Pragma("unroll") for (uint k = 0; k < 4; ++k) d[k] = block_scales4(head, rr[k] + b);
    _Pragma("unroll") for (uint i = 0; i < 4; ++i) {
      __global const float* xp = x + (b + i) * CHUNK;
      const float16 xa = vload16(0, xp), xb = vload16(1, xp);
      const float16 x8 = X_OFFSET8(xa, xb);  // shared by the four rows
      _Pragma("unroll") for (uint k = 0; k < 4; ++k) {
        float16 w0, w1;
        const float e = i == 0 ? d[k].s0 : (i == 1 ? d[k].s1 : (i == 2 ? d[k].s2 : d[k].s3));
        DECODE_BLOCK_TT(1, body, rr[k] + b + i, &w0, &w1);
        acc[k] = fma(w0 * xa + w1 * xb - x8, (float16)(e), acc[k]);
      }
    }
  }
#endif
  for (; b < nb; ++b) {
    _Pragma("unroll") for (uint sub = 0; sub < CHUNKS_PER_BLOCK; ++sub) {
      __global const float* xp = x + (b * CHUNKS_PER_BLOCK + sub) * CHUNK;
      const float16 xa = vload16(0, xp), xb = vload16(1, xp);
      _Pragma("unroll") for (uint k = 0; k < 4; ++k) {
        float16 w0, w1;
        decode_chunk(body, head, rr[k] + b, sub, &w0, &w1);
        ACC_ADD(acc[k], w0, w1, xa, xb);
      }
    }
  }
  return (float4)(acc_sum(acc[0]), acc_sum(acc[1]), acc_sum(acc[2]), acc_sum(acc[3]));
}

// Token t's combine over its pairs' slices (and norm), by the work group's one item.
inline void combine_parts(uint t, uint n, uint slices, __global volatile const float* part,
                          __global float* x, __global const float* w, __global const int* off,
                          uint accumulate, __global const float* norm_w, uint use_norm, float eps,
                          __global float* xn) {
  const int begin = off[t], end = off[t + 1];
  __global float* xr = x + (ulong)t * n;
  SquareSum sq = {0.0f, 0.0f};
  for (uint i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (int p = begin; p < end; ++p) {
      float sum = 0.0f;
      for (uint s = 0; s < slices; ++s) sum += part[((ulong)p * slices + s) * n + i];
      acc += w[p] * sum;
    }
    const float v = accumulate ? xr[i] + acc : acc;
    xr[i] = v;
    add_square(&sq, v);
  }
  if (!use_norm) return;
  const float scale = 1.0f / sqrt(sq.sum / (float)n + eps);
  for (uint i = 0; i < n; ++i) xn[(ulong)t * n + i] = xr[i] * scale * norm_w[i];
}

#define EXPERT_FFN_PARAMS                                                                          \
  __global const uchar *gu_body, __global const uchar *gu_head, uint gu_bpr,                       \
      __global const uchar *dn_body, __global const uchar *dn_head, uint dn_bpr, uint ff,          \
      uint n_embd, uint n_expert, __global const float *x, ulong x_off, uint x_rows,               \
      __global const int *pair_token, __global const int *pair_expert, uint n_pairs,               \
      __global float *h, __global float *part, uint slices, __global float *cx,                    \
      __global const float *cw, __global const int *coff, __global const int *ctok, uint c_tokens, \
      uint accumulate, __global const float *norm_w, uint use_norm, float eps,                     \
      __global float *cxn, __global volatile int *counters
#define EXPERT_FFN_ARGS                                                                            \
  gu_body, gu_head, gu_bpr, dn_body, dn_head, dn_bpr, ff, n_embd, n_expert, x, x_off, x_rows,      \
      pair_token, pair_expert, n_pairs, h, part, slices, cx, cw, coff, ctok, c_tokens, accumulate, \
      norm_w, use_norm, eps, cxn, counters
#if X_Q8_ON
#define EXPERT_FFN_LOCALS                                                   \
  __local char q8x[Q8_BYTES(X_Q8_MAX_GROUPS)] __attribute__((aligned(64))); \
  __local char q8h[Q8_BYTES(X_Q8_MAX_GROUPS)] __attribute__((aligned(64)));
#else
#define EXPERT_FFN_LOCALS __local char q8x[1], q8h[1];
#endif

// Four rows (first blocks r.s0 .. r.s3, nb blocks each) dotted with x, from x's 8-bit blocks in
// q8 (X_Q8_ON, groups > 0) or from x's floats.
#if X_Q8_ON
#define EXPERT_DOT4(body, head, r, nb, xp, q8, groups) \
  dot_rows4_q8(body, head, r, nb, xp, q8, groups)
#else
#define EXPERT_DOT4(body, head, r, nb, xp, q8, groups) dot_blocks4(body, head, r, nb, xp)
#endif

// Unit (s, p) of the expert FFN (the work group (s, p) of experts_ffn), by one work item; q8x and
// q8h: local scratch of Q8_BYTES(X_Q8_MAX_GROUPS) each (X_Q8_ON).
inline void expert_ffn_unit(uint s, uint p, EXPERT_FFN_PARAMS, __local char* q8x,
                            __local char* q8h) {
  if (s == 0 && p == 0)
    for (uint t = 0; t < c_tokens; ++t)
      if (coff[t + 1] == coff[t])
        combine_parts(t, n_embd, slices, part, cx, cw, coff, accumulate, norm_w, use_norm, eps,
                      cxn);
  if (p >= n_pairs || s >= slices) return;
  const int e = pair_expert[p], tk = pair_token[p];
  const bool ok = e >= 0 && (uint)e < n_expert && tk >= 0 && (uint)tk < x_rows;
  const ulong ec = (ulong)clamp(e, 0, (int)n_expert - 1);
#if X_Q8_ON
  // x and h in 8-bit blocks: slices start at a run of four blocks (the last takes the rest), so
  // the runs are the same whatever the slices.
  const uint dn_groups = dn_bpr / 4;
  const uint b0 = 4 * (s * dn_groups / slices),
             b1 = s + 1 == slices ? dn_bpr : 4 * ((s + 1) * dn_groups / slices);
  const uint gx = gu_bpr / 4 <= X_Q8_MAX_GROUPS ? gu_bpr / 4 : 0;
  const uint gh = (b1 - b0) / 4 <= X_Q8_MAX_GROUPS ? (b1 - b0) / 4 : 0;
#else
  const uint b0 = s * dn_bpr / slices, b1 = (s + 1) * dn_bpr / slices;
  const uint gx = 0, gh = 0;
#endif
  const uint r0 = b0 * BLOCK_ELEMS, r1 = min(b1 * BLOCK_ELEMS, ff);
  __global const float* xr = x + x_off + (ulong)clamp(tk, 0, (int)x_rows - 1) * n_embd;
  __global float* hp = h + (ulong)p * ff;
#if X_Q8_ON
  if (r0 < r1) q8_fill_one(xr, n_embd, q8x, gx);
#endif
  // Gate and up rows r and r + 1 (r1 - r0 is a multiple of 32).
  const ulong g0 = ec * 2 * ff, u0 = g0 + ff;
  for (uint r = r0; r < r1; r += 2) {
    const float4 v = EXPERT_DOT4(gu_body, gu_head,
                                 (ulong4)((g0 + r) * gu_bpr, (g0 + r + 1) * gu_bpr,
                                          (u0 + r) * gu_bpr, (u0 + r + 1) * gu_bpr),
                                 gu_bpr, xr, q8x, gx);
    hp[r] = v.s0 / (1.0f + exp(-v.s0)) * v.s2;
    hp[r + 1] = v.s1 / (1.0f + exp(-v.s1)) * v.s3;
  }
#if X_Q8_ON
  if (r0 < r1) q8_fill_one(hp + r0, r1 - r0, q8h, gh);
#endif
  __global float* pp = part + ((ulong)p * slices + s) * n_embd;
  for (uint o = 0; o < n_embd; o += 4) {  // n_embd is a multiple of 32
    const ulong row = (ec * n_embd + o) * dn_bpr + b0;
    const float4 v = EXPERT_DOT4(dn_body, dn_head,
                                 (ulong4)(row, row + dn_bpr, row + 2 * dn_bpr, row + 3 * dn_bpr),
                                 b1 - b0, hp + r0, q8h, gh);
    vstore4(ok ? v : (float4)(NAN), 0, pp + o);
  }
  mem_fence(CLK_GLOBAL_MEM_FENCE);
  const int t = ctok[p];
  if (t < 0 || (uint)t >= c_tokens) return;
  const int want = (int)slices * (coff[t + 1] - coff[t]);
  if (atomic_inc(counters + t) == want - 1) {
    atomic_xchg(counters + t, 0);
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    combine_parts((uint)t, n_embd, slices, part, cx, cw, coff, accumulate, norm_w, use_norm, eps,
                  cxn);
  }
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1))) void experts_ffn(EXPERT_FFN_PARAMS) {
  EXPERT_FFN_LOCALS
  expert_ffn_unit(get_group_id(0), get_group_id(1), EXPERT_FFN_ARGS, q8x, q8h);
}
#endif

// ROUTE_FFN (one lane per row on CPUs, several on GPUs: see the kernel's second half; built
// with ROUTE_TAIL and EXPERT_FFN, one format): a MoE
// layer's decode after its attention in one launch, where matmul_t1 with the routing tail and
// experts_ffn take two (on PoCL every launch is a fork/join over all threads). One token. Work is
// done in phases; after phase 1 the groups' first items claim units of a phase from a counter and
// count the units they finish (the join's ints: routed, claimed 2a, started, finished, combined,
// claimed 3, done 2a, claimed 2b, done 2b, done 3, claimed 4).
// - Phase 1 is matmul_t1's with the routing tail, by every work group (the output projection's
//   rows, then the FFN norm, router and top-k by the last group); the group that routes bumps
//   the routed count.
// - Phase 2a, units (s, p) = (u % slices, u / slices): pair p's h rows of slice s (ff's runs of
//   32 rows split `slices` ways) = silu(gate xn) * up xn, xn the routing's normed row.
// - Phase 2b, once every 2a unit is done, units of DN_UNIT rows of the residual stream cx: the
//   rows' sum over the token's pairs of cw[p] * down_p h_p, added to cx (c_accumulate), their
//   sum of squares into part[u]. The group that finishes the last unit writes
//   cxn = RMSNorm(cx) * c_norm_w (c_use_norm) and bumps the combined count.
// - With np_rows > 0, phase 3, once combined: the next layer's input projection (np_rows dense
//   rows of np_bpr blocks, the program's format) of cxn into np_y, in units of NP_UNIT rows.
// - With ROUTE_ATTN (the program route_attention.cl: attention.cl's decode in the same program)
//   and np_rows > 0, phase 4, once every phase-3 unit is done: the next layer's decode attention
//   of one token (attention_decode_rows's work, its arguments a_*: AttentionOp's decode with its
//   finish, reading the q|k|v row np_y), units u = (chunk u % a_n_chunks, KV head u /
//   a_n_chunks); a KV head's last chunk combines its heads into a_out. Phase 1 read the launch's
//   x (the attention output a_out may alias) before the routing, which phase 2a waits for.
// No group waits without bound: a group that finds the previous phase not done waits (FFN_SPIN
// reads) only when every group has started, so the groups still working run; when the wait runs
// out it skips the phase. The group that finishes a phase's last unit always goes on into the
// next and claims what is left. The last group to finish resets the join for the next launch.
// An out-of-range expert or token id makes the rows NaN.
#if defined(ROUTE_FFN) && defined(ROUTE_TAIL) && defined(EXPERT_FFN)
#if ROUTE_ATTN && LANES != 1
#error "ROUTE_ATTN needs one lane per row"
#endif
// The waits' bound in reads, FFN_BACKOFF idle steps apart (a few ms): long enough that a group
// waiting while the previous phase's last unit runs stays to share the next phase (65,536 reads
// without the idle steps ran out on the 2-core machine, leaving phase 3 to one group), short
// enough to end on a driver that breaks the join's assumption (then the group that finishes the
// previous phase does the rest).
#define FFN_SPIN (1 << 20)
#define NP_UNIT 16
#define DN_UNIT 32
#define JOIN_INTS 11
// The join's ints, each on a cache line of its own (JOIN_STRIDE ints apart): counters that groups
// claim units from are not the lines that waiting groups read.
#ifndef JOIN_STRIDE
#define JOIN_STRIDE 16
#endif
#define JOIN(i) (ffn_join + (i)*JOIN_STRIDE)
#ifndef FFN_BACKOFF
#define FFN_BACKOFF 16
#endif
#undef ROUTED_HOOK
#if LANES == 1
#define ROUTED_HOOK(n)                   \
  if (get_local_id(0) == 0 && (n) > 0) { \
    mem_fence(CLK_GLOBAL_MEM_FENCE);     \
    atomic_add(JOIN(0), (n));            \
  }
#else
// (Several lanes: every item wrote the routed row; their writes are ordered before the count.)
#define ROUTED_HOOK(n)                   \
  barrier(CLK_GLOBAL_MEM_FENCE);         \
  if (get_local_id(0) == 0 && (n) > 0) { \
    mem_fence(CLK_GLOBAL_MEM_FENCE);     \
    atomic_add(JOIN(0), (n));            \
  }
#if VEC_ACC
#error "ROUTE_FFN with several lanes takes scalar sums"
#endif
#define RF_MAX_PAIRS 64  // MatmulOp::kExpertFfnMaxPairs
// Row rb's (first block; nb blocks) dot product with x staged in local memory (XPAD floats per
// chunk), over this lane's chunks lane, lane + LANES, ...
inline float rf_dot(__global const uchar* body, __global const uchar* head, ulong rb, uint nb,
                    __local const float* xl, uint lane) {
  float acc = 0.0f;
  for (uint k = lane; k < nb * CHUNKS_PER_BLOCK; k += LANES) {
    float16 w0, w1;
    decode_chunk(body, head, rb + k / CHUNKS_PER_BLOCK, k % CHUNKS_PER_BLOCK, &w0, &w1);
    __local const float* xp = xl + k * XPAD;
    acc += dot16(w0, vload16(0, xp)) + dot16(w1, vload16(0, xp + 16));
  }
  return acc;
}
#endif

// Whether join[i] has reached want: at once, or after waiting when every group has started.
inline bool join_ready(__global volatile int* ffn_join, uint i, int want, int groups) {
  bool ok = *JOIN(i) >= want;
  if (!ok && *JOIN(2) == groups)
    for (uint n = 0; n < FFN_SPIN && !ok; ++n) {
      // Back off between reads: the groups still working take the lines waiters read.
      volatile int idle = 0;
      for (int k = 0; k < FFN_BACKOFF; ++k) idle += k;
      ok = *JOIN(i) >= want;
    }
  mem_fence(CLK_GLOBAL_MEM_FENCE);
  return ok;
}

__kernel __attribute__((reqd_work_group_size(LANES * WG_ROWS, 1, 1))) void matmul_route_ffn(
    __global const uchar* body, __global const uchar* head, uint rows, uint cols, uint bpr,
    __global const float* x, ulong x_off, __global float* y, ulong y_off, uint n_tokens, uint ldy,
    uint accumulate ROUTE_ARGS, __global const uchar* gu_body, __global const uchar* gu_head,
    uint gu_bpr, __global const uchar* dn_body, __global const uchar* dn_head, uint dn_bpr, uint ff,
    uint n_expert, __global const int* pair_token, uint n_pairs, __global float* h,
    __global float* part, uint slices, __global float* cx, __global const float* cw,
    __global const int* coff, __global const int* ctok, uint c_tokens, uint c_accumulate,
    __global const float* c_norm_w, uint c_use_norm, float c_eps, __global float* cxn,
    __global volatile int* counters, __global volatile int* ffn_join, __global const uchar* np_body,
    __global const uchar* np_head, uint np_bpr, uint np_rows, __global float* np_y
#if ROUTE_ATTN
    , DECODE_ROWS_PARAMS(a_)
#endif
) {
  if (get_local_id(0) == 0) atomic_inc(JOIN(2));
  MATMUL_BODY(1, RPW, ,
              Q8_TILE(1, x + xrow[0], out)
                  tile_1(body, head, 0, r0, rows, cols, bpr, x, xrow, lane, out, xs))
  EXPERT_FFN_LOCALS
#if LANES == 1
  if (get_local_id(0) != 0) return;
  const int groups = (int)(get_num_groups(0) * get_num_groups(1));
#if X_Q8_ON
  const uint gx = gu_bpr / 4 <= X_Q8_MAX_GROUPS ? gu_bpr / 4 : 0;
  const uint gh = dn_bpr / 4 <= X_Q8_MAX_GROUPS ? dn_bpr / 4 : 0;
#else
  const uint gx = 0, gh = 0;
#endif
  // Phase 2a: gate|up.
  const uint runs = ff / 32, units_a = slices * n_pairs;
  bool xq = false;  // q8x holds xn
  uint u = join_ready(ffn_join, 0, (int)n_tokens, groups) ? (uint)atomic_inc(JOIN(1)) : units_a;
  for (; u < units_a; u = (uint)atomic_inc(JOIN(1))) {
    const uint s = u % slices, p = u / slices;
    const int e = rt_ids[p], tk = pair_token[p];
    const bool ok = e >= 0 && (uint)e < n_expert && tk == 0;
    const ulong g0 = (ulong)clamp(e, 0, (int)n_expert - 1) * 2 * ff, u0 = g0 + ff;
    const uint r0 = 32 * (s * runs / slices), r1 = 32 * ((s + 1) * runs / slices);
#if X_Q8_ON
    if (!xq && r0 < r1) q8_fill_one(rt_xn, rows, q8x, gx);
    xq = xq || r0 < r1;
#endif
    __global float* hp = h + (ulong)p * ff;
    for (uint r = r0; r < r1; r += 2) {
      const float4 v = EXPERT_DOT4(gu_body, gu_head,
                                   (ulong4)((g0 + r) * gu_bpr, (g0 + r + 1) * gu_bpr,
                                            (u0 + r) * gu_bpr, (u0 + r + 1) * gu_bpr),
                                   gu_bpr, rt_xn, q8x, gx);
      hp[r] = ok ? v.s0 / (1.0f + exp(-v.s0)) * v.s2 : NAN;
      hp[r + 1] = ok ? v.s1 / (1.0f + exp(-v.s1)) * v.s3 : NAN;
    }
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    atomic_inc(JOIN(6));
  }
  // Phase 2b: down and the weighted sum over the pairs, DN_UNIT rows at a time.
  const uint units_b = rows / DN_UNIT;  // rows (n_embd) is a multiple of 32
  u = join_ready(ffn_join, 6, (int)units_a, groups) ? (uint)atomic_inc(JOIN(7)) : units_b;
  for (; u < units_b; u = (uint)atomic_inc(JOIN(7))) {
    const uint o0 = u * DN_UNIT;
    float acc[DN_UNIT];
    for (uint k = 0; k < DN_UNIT; ++k) acc[k] = 0.0f;
    for (int p = coff[0]; p < coff[1]; ++p) {
      const int e = rt_ids[p];
      const bool ok = e >= 0 && (uint)e < n_expert;
      const ulong ec = (ulong)clamp(e, 0, (int)n_expert - 1);
      __global const float* hp = h + (ulong)p * ff;
#if X_Q8_ON
      q8_fill_one(hp, ff, q8h, gh);
#endif
      const float wp = cw[p];
      for (uint o = 0; o < DN_UNIT; o += 4) {
        const ulong row = (ec * rows + o0 + o) * dn_bpr;
        const float4 v = EXPERT_DOT4(
            dn_body, dn_head, (ulong4)(row, row + dn_bpr, row + 2 * dn_bpr, row + 3 * dn_bpr),
            dn_bpr, hp, q8h, gh);
        const float4 add = ok ? wp * v : (float4)(NAN);
        acc[o] += add.s0;
        acc[o + 1] += add.s1;
        acc[o + 2] += add.s2;
        acc[o + 3] += add.s3;
      }
    }
    SquareSum sq = {0.0f, 0.0f};
    for (uint k = 0; k < DN_UNIT; ++k) {
      const float v = c_accumulate ? cx[o0 + k] + acc[k] : acc[k];
      cx[o0 + k] = v;
      add_square(&sq, v);
    }
    part[u] = sq.sum;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    if (atomic_inc(JOIN(8)) == (int)units_b - 1) {
      mem_fence(CLK_GLOBAL_MEM_FENCE);
      if (c_use_norm) {
        __global volatile const float* vp = part;
        float total = 0.0f;
        for (uint i = 0; i < units_b; ++i) total += vp[i];
        const float scale = 1.0f / sqrt(total / (float)rows + c_eps);
        for (uint i = 0; i < rows; ++i) cxn[i] = cx[i] * scale * c_norm_w[i];
      }
      mem_fence(CLK_GLOBAL_MEM_FENCE);
      atomic_inc(JOIN(4));
    }
  }
  if (np_rows > 0) {
    // Phase 3: the next projection of cxn, once the combine has written it.
    const uint units3 = (np_rows + NP_UNIT - 1) / NP_UNIT;
    u = join_ready(ffn_join, 4, 1, groups) ? (uint)atomic_inc(JOIN(5)) : units3;
#if X_Q8_ON
    const uint gn = np_bpr / 4 <= X_Q8_MAX_GROUPS ? np_bpr / 4 : 0;
    if (u < units3) q8_fill_one(cxn, rows, q8x, gn);
#else
    const uint gn = 0;
#endif
    for (; u < units3; u = (uint)atomic_inc(JOIN(5))) {
      for (uint r = u * NP_UNIT; r < min((u + 1) * NP_UNIT, np_rows); r += 4) {
        // Four rows at a time; past the last row, the last again (not stored).
        const uint last = np_rows - 1;
        const ulong4 at =
            (ulong4)(r, min(r + 1, last), min(r + 2, last), min(r + 3, last)) * (ulong)np_bpr;
        const float4 v = EXPERT_DOT4(np_body, np_head, at, np_bpr, cxn, q8x, gn);
        if (r + 4 <= np_rows) {
          vstore4(v, 0, np_y + r);
        } else {
          np_y[r] = v.s0;
          if (r + 1 < np_rows) np_y[r + 1] = v.s1;
          if (r + 2 < np_rows) np_y[r + 2] = v.s2;
        }
      }
      mem_fence(CLK_GLOBAL_MEM_FENCE);
      atomic_inc(JOIN(9));
    }
#if ROUTE_ATTN
    // Phase 4: the next layer's decode attention on np_y.
    const uint units4 = a_n_chunks * N_HEAD_KV;
    u = join_ready(ffn_join, 9, (int)units3, groups) ? (uint)atomic_inc(JOIN(10)) : units4;
    for (; u < units4; u = (uint)atomic_inc(JOIN(10)))
      decode_rows_unit(u % a_n_chunks, (int)(u / a_n_chunks), 0, DECODE_ROWS_NAMES(a_));
#endif
  }
  mem_fence(CLK_GLOBAL_MEM_FENCE);
  if (atomic_inc(JOIN(3)) == groups - 1)
    for (uint i = 0; i < JOIN_INTS; ++i) atomic_xchg(JOIN(i), 0);
#else
  // Several lanes per row (GPUs): every item stays. Item 0 reads the join and claims each unit,
  // which it shares through local memory; each group takes about one unit per phase (a unit is
  // one or more passes of WG_ROWS * RPW rows). A phase's x (the routed row, the pairs' h, the
  // combined row) is staged into local memory (xs, XPAD floats per chunk of 32) by the whole
  // group; row group rg = lid / LANES takes RPW rows of a pass and its lanes split each row's
  // chunks (rf_dot), then reduce. The same phases and counters as one lane's, without the
  // partial sums of squares (the combining group sums the row itself); the slices argument is
  // not used. Rows other groups wrote in this launch are read through volatile loads, 8 at a
  // time per item.
  __local int rf_u, rf_flag, rf_ids[RF_MAX_PAIRS];
  __local float rf_w[RF_MAX_PAIRS];
  const uint lid = get_local_id(0), L = get_local_size(0), rg = lid / LANES, rpu = WG_ROWS * RPW;
  const uint groups = get_num_groups(0) * get_num_groups(1);
  __global volatile const float* cx_v = (__global volatile const float*)cx;
  uint u;
// The first unit of a phase: join[i] has reached want (else none: u = n), claimed from join[c].
#define RF_FIRST(i, want, c, n)                                                             \
  barrier(CLK_LOCAL_MEM_FENCE);                                                             \
  if (lid == 0)                                                                             \
    rf_u = join_ready(ffn_join, (i), (want), (int)groups) ? atomic_inc(JOIN(c)) : (int)(n); \
  barrier(CLK_LOCAL_MEM_FENCE);                                                             \
  u = (uint)rf_u
#define RF_NEXT(c)                          \
  barrier(CLK_LOCAL_MEM_FENCE);             \
  if (lid == 0) rf_u = atomic_inc(JOIN(c)); \
  barrier(CLK_LOCAL_MEM_FENCE);             \
  u = (uint)rf_u
// The unit's writes ordered before item 0 counts it in join[i]; rf_flag: it was the last of n.
#define RF_DONE(i, n)                                  \
  barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE); \
  if (lid == 0) {                                      \
    mem_fence(CLK_GLOBAL_MEM_FENCE);                   \
    rf_flag = atomic_inc(JOIN(i)) == (int)(n)-1;       \
  }                                                    \
  barrier(CLK_LOCAL_MEM_FENCE)
// n floats from src into xs (the host keeps what a phase stages within xs).
#define RF_STAGE(src, n)                                                             \
  barrier(CLK_LOCAL_MEM_FENCE);                                                      \
  for (uint i0 = lid; i0 < (n); i0 += 8 * L) {                                       \
    float v[8];                                                                      \
    for (uint b = 0; b < 8; ++b) v[b] = i0 + b * L < (n) ? (src)[i0 + b * L] : 0.0f; \
    for (uint b = 0; b < 8; ++b) {                                                   \
      const uint i = i0 + b * L;                                                     \
      if (i < (n)) xs[(i / CHUNK) * XPAD + i % CHUNK] = v[b];                        \
    }                                                                                \
  }                                                                                  \
  barrier(CLK_LOCAL_MEM_FENCE)
// The routing's expert ids and weights of the pairs, into local memory.
#define RF_PAIRS                                           \
  for (uint i = lid; i < n_pairs; i += L) {                \
    rf_ids[i] = ((__global volatile const int*)rt_ids)[i]; \
    rf_w[i] = ((__global volatile const float*)cw)[i];     \
  }                                                        \
  barrier(CLK_LOCAL_MEM_FENCE)
  // Phase 2a: gate|up of the h rows f (pair f / ff, row f % ff), passes of rpu rows.
  const uint rows_a = n_pairs * ff, pass_a = (rows_a + rpu - 1) / rpu;
  const uint per_a = (pass_a + groups - 1) / groups, units_a = (pass_a + per_a - 1) / per_a;
  RF_FIRST(0, (int)n_tokens, 1, units_a);
  RF_STAGE((__global volatile const float*)rt_xn, rows);
  RF_PAIRS;
  while (u < units_a) {
    for (uint a = u * per_a; a < min((u + 1) * per_a, pass_a); ++a) {
      const uint f0 = a * rpu + rg * RPW;
      float o[2 * RPW];
      for (uint rr = 0; rr < RPW; ++rr) {
        const uint f = min(f0 + rr, rows_a - 1);
        const ulong g = (ulong)clamp(rf_ids[f / ff], 0, (int)n_expert - 1) * 2 * ff + f % ff;
        o[rr] = rf_dot(gu_body, gu_head, g * gu_bpr, gu_bpr, xs, lane);
        o[RPW + rr] = rf_dot(gu_body, gu_head, (g + ff) * gu_bpr, gu_bpr, xs, lane);
      }
      if (reduce_lanes(o, 2 * RPW, scratch))
        for (uint rr = 0; rr < RPW; ++rr) {
          const uint f = f0 + rr;
          if (f >= rows_a) break;
          const int e = rf_ids[f / ff];
          const bool ok = e >= 0 && (uint)e < n_expert && pair_token[f / ff] == 0;
          const float g = o[rr], v = o[RPW + rr];
          h[f] = ok ? g / (1.0f + exp(-g)) * v : NAN;
        }
    }
    RF_DONE(6, units_a);
    RF_NEXT(1);
  }
  // Phase 2b: down rows o0 .. (one pass a unit) summed over the token's pairs into cx, the pairs'
  // h staged as many at a time as xs holds; the group that ends the last unit writes the norm.
  const uint units_b = (rows + rpu - 1) / rpu, fit = max(1u, (uint)(8 * LANES * CHUNK) / ff);
  RF_FIRST(6, (int)units_a, 7, units_b);
  RF_PAIRS;
  while (u < units_b) {
    const uint o0 = u * rpu + rg * RPW;
    float acc[RPW];
    for (uint rr = 0; rr < RPW; ++rr) acc[rr] = 0.0f;
    for (uint pb = (uint)coff[0]; pb < (uint)coff[1]; pb += fit) {
      const uint pe = min(pb + fit, (uint)coff[1]);
      RF_STAGE((__global volatile const float*)h + (ulong)pb * ff, (pe - pb) * ff);
      for (uint p = pb; p < pe; ++p) {
        const int e = rf_ids[p];
        const bool ok = e >= 0 && (uint)e < n_expert;
        const ulong ec = (ulong)clamp(e, 0, (int)n_expert - 1);
        const float wp = rf_w[p];
        __local const float* xl = xs + ((p - pb) * ff / CHUNK) * XPAD;
        for (uint rr = 0; rr < RPW; ++rr) {
          const ulong r = ec * rows + min(o0 + rr, rows - 1);
          const float d = rf_dot(dn_body, dn_head, r * dn_bpr, dn_bpr, xl, lane);
          acc[rr] += ok ? wp * d : NAN;
        }
      }
    }
    if (reduce_lanes(acc, RPW, scratch))
      for (uint rr = 0; rr < RPW; ++rr)
        if (o0 + rr < rows) cx[o0 + rr] = c_accumulate ? cx_v[o0 + rr] + acc[rr] : acc[rr];
    RF_DONE(8, units_b);
    if (rf_flag) {
      if (c_use_norm) {
        float ss = 0.0f;
        for (uint i0 = lid; i0 < rows; i0 += 8 * L) {
          float v[8];
          for (uint b = 0; b < 8; ++b) v[b] = i0 + b * L < rows ? cx_v[i0 + b * L] : 0.0f;
          for (uint b = 0; b < 8; ++b) ss += v[b] * v[b];
        }
        const float scale = 1.0f / sqrt(work_group_sum(ss, scratch) / (float)rows + c_eps);
        for (uint i0 = lid; i0 < rows; i0 += 8 * L) {
          float v[8];
          for (uint b = 0; b < 8; ++b) v[b] = i0 + b * L < rows ? cx_v[i0 + b * L] : 0.0f;
          for (uint b = 0; b < 8; ++b)
            if (i0 + b * L < rows) cxn[i0 + b * L] = v[b] * scale * c_norm_w[i0 + b * L];
        }
      }
      RF_DONE(4, 1);
    }
    RF_NEXT(7);
  }
  if (np_rows > 0) {
    // Phase 3: the next projection of cxn, once the combine has written it.
    const uint pass3 = (np_rows + rpu - 1) / rpu, per3 = (pass3 + groups - 1) / groups;
    const uint units3 = (pass3 + per3 - 1) / per3;
    RF_FIRST(4, 1, 5, units3);
    RF_STAGE((__global volatile const float*)cxn, rows);
    while (u < units3) {
      for (uint a = u * per3; a < min((u + 1) * per3, pass3); ++a) {
        const uint q0 = a * rpu + rg * RPW;
        float o[RPW];
        for (uint rr = 0; rr < RPW; ++rr)
          o[rr] =
              rf_dot(np_body, np_head, (ulong)min(q0 + rr, np_rows - 1) * np_bpr, np_bpr, xs, lane);
        if (reduce_lanes(o, RPW, scratch))
          for (uint rr = 0; rr < RPW; ++rr)
            if (q0 + rr < np_rows) np_y[q0 + rr] = o[rr];
      }
      RF_DONE(9, units3);
      RF_NEXT(5);
    }
  }
  barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
  if (lid == 0) {
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    if (atomic_inc(JOIN(3)) == (int)groups - 1)
      for (uint i = 0; i < JOIN_INTS; ++i) atomic_xchg(JOIN(i), 0);
  }
#undef RF_FIRST
#undef RF_NEXT
#undef RF_DONE
#undef RF_STAGE
#undef RF_PAIRS
#endif
}
#endif
