// Tiled GEMM over stacked quantized experts, for steps with many (token, expert) pairs grouped by
// expert (prefill): y row p (rows floats) = W[pair_expert[p]] times x row pair_token[p], the same
// product as matmul.cl's experts_t{1,4,8}, but each work group computes a GT_R x GT_P tile of
// outputs (GT_R rows of one expert x up to GT_P of its pairs), so every weight decoded into local
// memory serves GT_P pairs instead of 8 and every x value GT_R rows.
//
// dense != 0: one weight (n_expert 1) and pair p is token p (pair_token and pair_expert are not
// read): a dense GEMM over n_pairs tokens. Output row p is at y_off + p * ldy; accumulate != 0
// adds the product to it (a residual).
//
// Pairs must be sorted by expert (moe_group_pairs, or the host's stable sort), ids outside
// [0, n_expert) last. Work group (gr, g1): rows gr * GT_R .. +GT_R-1; g1 = expert e *
// tiles_per_expert + tile t covers pairs seg_begin(e) + GT_P t .. of expert e's run (found by
// binary search; groups past the run's end return at once). Group e == n_expert is the run of
// invalid ids: NaN rows, as experts_t writes; a pair whose token id is out of range gets a NaN row
// too.
//
// Tile shape (build macros, MatmulVariant::gemm_*): 256 items as GT_TY x GT_TX (GT_TX along
// pairs); item (ty, tx) accumulates GT_TR rows x GT_TP pairs in registers, in groups of 4: rows
// i * 4 GT_TY + 4 ty .. +3 and pairs j * 4 GT_TX + 4 tx .. +3, so the float4 reads of local memory
// by neighbouring items are neighbouring. A K step is GT_KC chunks (32 columns each): GT_R x GT_KC
// items decode one chunk of one row each into ws (column-major: ws[c][r]) and all 256 stage x
// (xs[c][p]). Both are read from global memory into registers one step ahead (while the step
// before computes), then stored to local memory. Build macros: FMT_* (matmul_formats.clh).
#include "common.clh"
#include "matmul_formats.clh"

#ifndef GT_TR
#define GT_TR 4
#endif
#ifndef GT_TP
#define GT_TP 4
#endif
#ifndef GT_TX
#define GT_TX 8
#endif
#ifndef GT_KC
#define GT_KC 2
#endif
#define GT_TY (256 / GT_TX)
#define GT_R (GT_TY * GT_TR)
#define GT_P (GT_TX * GT_TP)
#define GT_K (GT_KC * CHUNK)             // columns per K step
#define WS_LD (GT_R + 4)                 // float4-aligned rows of ws, shifted a bank per column
#define XS_LD (GT_P + 4)
#define GT_XN (GT_P * GT_K / 256)        // x values each item stages per step
#if GT_R * GT_KC > 256 || (GT_P * GT_K) % 256 != 0 || GT_TR % 4 != 0 || GT_TP % 4 != 0
#error "experts_gemm: unsupported tile shape"
#endif

inline uint expert_key(int id, uint n_expert) {
  return (id >= 0 && (uint)id < n_expert) ? (uint)id : n_expert;
}

// First position q in [0, n) with key(ids[q]) >= e (ids sorted by key).
inline uint lower_bound_expert(__global const int* ids, uint n, uint n_expert, uint e) {
  uint lo = 0, hi = n;
  while (lo < hi) {
    const uint mid = (lo + hi) / 2;
    if (expert_key(ids[mid], n_expert) < e)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

__kernel __attribute__((reqd_work_group_size(256, 1, 1))) void experts_gemm(
    __global const uchar* body, __global const uchar* head, uint rows, uint cols, uint bpr,
    __global const float* x, ulong x_off, uint x_rows, __global float* y, ulong y_off,
    __global const int* pair_token, __global const int* pair_expert, uint n_pairs,
    uint n_expert, uint tiles_per_expert, uint ldy, uint accumulate, uint dense) {
  __local float ws[GT_K * WS_LD];
  __local float xs[GT_K * XS_LD];
  __local int tok[GT_P];
  const uint lid = get_local_id(0);
  const uint e = get_group_id(1) / tiles_per_expert, t = get_group_id(1) % tiles_per_expert;
  if (e > n_expert) return;
  if (dense && e > 0) return;
  const uint seg0 = dense ? 0 : lower_bound_expert(pair_expert, n_pairs, n_expert, e);
  const uint seg1 = dense ? n_pairs : lower_bound_expert(pair_expert, n_pairs, n_expert, e + 1);
  const uint p0 = seg0 + t * GT_P;
  if (p0 >= seg1) return;  // the whole group: p0 is uniform
  const uint np = min((uint)GT_P, seg1 - p0);
  const uint r0 = get_group_id(0) * GT_R;
  if (e == n_expert) {  // invalid expert ids
    for (uint i = lid; i < np * GT_R; i += 256) {
      const uint j = i / GT_R, r = r0 + i % GT_R;
      if (r < rows) y[y_off + (ulong)(p0 + j) * ldy + r] = NAN;
    }
    return;
  }
  for (uint i = lid; i < GT_P; i += 256)
    tok[i] = i < np ? (dense ? (int)(p0 + i) : pair_token[p0 + i]) : -1;
  barrier(CLK_LOCAL_MEM_FENCE);

  const uint tx = lid % GT_TX, ty = lid / GT_TX;
  float acc[GT_TR][GT_TP];
#pragma unroll
  for (uint i = 0; i < GT_TR; ++i)
#pragma unroll
    for (uint j = 0; j < GT_TP; ++j) acc[i][j] = 0.0f;
  const uint nchunks = bpr * CHUNKS_PER_BLOCK;
  // The decoding item's row (clamped: rows past the end decode a valid row, never stored).
  const uint dr = lid % GT_R, dk = lid / GT_R;  // dk < GT_KC for the decoders
  const bool decoder = lid < GT_R * GT_KC;
  const ulong rblk = ((ulong)e * rows + min(r0 + dr, rows - 1)) * bpr;
  // This item's staged x values: index i = lid + 256 n is pair i / GT_K, column i % GT_K of the
  // step (consecutive items on consecutive columns of one pair: coalesced reads).
  ulong xrow[GT_XN];
  bool xok[GT_XN];
#pragma unroll
  for (uint n = 0; n < GT_XN; ++n) {
    const int tk = tok[(lid + 256 * n) / GT_K];
    xok[n] = tk >= 0 && (uint)tk < x_rows;
    xrow[n] = x_off + (ulong)(xok[n] ? tk : 0) * cols + (lid + 256 * n) % GT_K;
  }

  float16 w0 = (float16)(0.0f), w1 = (float16)(0.0f);
  float xv[GT_XN];
  // Step k0's global reads into registers.
#define GT_FETCH(k0)                                                                            \
  do {                                                                                          \
    if (decoder) {                                                                              \
      const uint k = (k0) + dk;                                                                 \
      w0 = (float16)(0.0f);                                                                     \
      w1 = (float16)(0.0f);                                                                     \
      if (k < nchunks) decode_chunk(body, head, rblk + k / CHUNKS_PER_BLOCK, k % CHUNKS_PER_BLOCK, \
                                    &w0, &w1);                                                  \
    }                                                                                           \
    _Pragma("unroll") for (uint n = 0; n < GT_XN; ++n) {                                        \
      const uint col = (k0) * CHUNK + (lid + 256 * n) % GT_K;                                   \
      xv[n] = (xok[n] && col < cols) ? x[xrow[n] + (k0) * CHUNK] : 0.0f;                        \
    }                                                                                           \
  } while (0)

  GT_FETCH(0);
  for (uint k0 = 0; k0 < nchunks; k0 += GT_KC) {
    if (decoder) {
      float wv[CHUNK];
      vstore16(w0, 0, wv);
      vstore16(w1, 1, wv);
#pragma unroll
      for (uint c = 0; c < CHUNK; ++c) ws[(dk * CHUNK + c) * WS_LD + dr] = wv[c];
    }
#pragma unroll
    for (uint n = 0; n < GT_XN; ++n) {
      const uint i = lid + 256 * n;
      xs[(i % GT_K) * XS_LD + i / GT_K] = xv[n];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (k0 + GT_KC < nchunks) GT_FETCH(k0 + GT_KC);
#pragma unroll 4
    for (uint c = 0; c < GT_K; ++c) {
      float4 a[GT_TR / 4], b[GT_TP / 4];
#pragma unroll
      for (uint i = 0; i < GT_TR / 4; ++i) a[i] = vload4(0, ws + c * WS_LD + i * 4 * GT_TY + ty * 4);
#pragma unroll
      for (uint j = 0; j < GT_TP / 4; ++j) b[j] = vload4(0, xs + c * XS_LD + j * 4 * GT_TX + tx * 4);
#pragma unroll
      for (uint i = 0; i < GT_TR / 4; ++i) {
#pragma unroll
        for (uint j = 0; j < GT_TP / 4; ++j) {
          acc[4 * i + 0][4 * j + 0] = fma(a[i].x, b[j].x, acc[4 * i + 0][4 * j + 0]);
          acc[4 * i + 0][4 * j + 1] = fma(a[i].x, b[j].y, acc[4 * i + 0][4 * j + 1]);
          acc[4 * i + 0][4 * j + 2] = fma(a[i].x, b[j].z, acc[4 * i + 0][4 * j + 2]);
          acc[4 * i + 0][4 * j + 3] = fma(a[i].x, b[j].w, acc[4 * i + 0][4 * j + 3]);
          acc[4 * i + 1][4 * j + 0] = fma(a[i].y, b[j].x, acc[4 * i + 1][4 * j + 0]);
          acc[4 * i + 1][4 * j + 1] = fma(a[i].y, b[j].y, acc[4 * i + 1][4 * j + 1]);
          acc[4 * i + 1][4 * j + 2] = fma(a[i].y, b[j].z, acc[4 * i + 1][4 * j + 2]);
          acc[4 * i + 1][4 * j + 3] = fma(a[i].y, b[j].w, acc[4 * i + 1][4 * j + 3]);
          acc[4 * i + 2][4 * j + 0] = fma(a[i].z, b[j].x, acc[4 * i + 2][4 * j + 0]);
          acc[4 * i + 2][4 * j + 1] = fma(a[i].z, b[j].y, acc[4 * i + 2][4 * j + 1]);
          acc[4 * i + 2][4 * j + 2] = fma(a[i].z, b[j].z, acc[4 * i + 2][4 * j + 2]);
          acc[4 * i + 2][4 * j + 3] = fma(a[i].z, b[j].w, acc[4 * i + 2][4 * j + 3]);
          acc[4 * i + 3][4 * j + 0] = fma(a[i].w, b[j].x, acc[4 * i + 3][4 * j + 0]);
          acc[4 * i + 3][4 * j + 1] = fma(a[i].w, b[j].y, acc[4 * i + 3][4 * j + 1]);
          acc[4 * i + 3][4 * j + 2] = fma(a[i].w, b[j].z, acc[4 * i + 3][4 * j + 2]);
          acc[4 * i + 3][4 * j + 3] = fma(a[i].w, b[j].w, acc[4 * i + 3][4 * j + 3]);
        }
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
#undef GT_FETCH
#pragma unroll
  for (uint j = 0; j < GT_TP; ++j) {
    const uint jj = (j / 4) * 4 * GT_TX + tx * 4 + j % 4;
    const int tk = jj < np ? tok[jj] : -1;
    const bool ok = tk >= 0 && (uint)tk < x_rows;
#pragma unroll
    for (uint i = 0; i < GT_TR; ++i) {
      const uint r = r0 + (i / 4) * 4 * GT_TY + ty * 4 + i % 4;
      if (jj < np && r < rows) {
        const ulong o = y_off + (ulong)(p0 + jj) * ldy + r;
        y[o] = ok ? (accumulate ? y[o] + acc[i][j] : acc[i][j]) : NAN;
      }
    }
  }
}
