// Tiled GEMM over stacked quantized experts, for steps with many (token, expert) pairs grouped by
// expert (prefill): y row p (rows floats) = W[pair_expert[p]] times x row pair_token[p], the same
// product as matmul.cl's experts_t{1,4,8}, but each work group computes a GT_R x GT_P tile of
// outputs (64 rows of one expert x up to 64 of its pairs), so every weight decoded into local
// memory serves 64 pairs instead of 8 and every x value 64 rows.
//
// Pairs must be sorted by expert (moe_group_pairs, or the host's stable sort), ids outside
// [0, n_expert) last. Work group (gr, g1): rows gr * 64 .. +63; g1 = expert e * tiles_per_expert +
// tile t covers pairs seg_begin(e) + 64 t .. of expert e's run (found by binary search; groups
// past the run's end return at once). Group e == n_expert is the run of invalid ids: NaN rows, as
// experts_t writes; a pair whose token id is out of range gets a NaN row too.
//
// Local size 256 (16 x 16): item (ty, tx) accumulates rows ty*4 .. +3 x pairs tx*4 .. +3 in
// registers. A K step is 2 chunks (64 columns): 128 items decode one chunk of one row each into
// ws (column-major: ws[c][r]), all 256 stage x (xs[c][p], +1 padding against bank conflicts).
// Build macros: FMT_* (matmul_formats.clh).
#include "common.clh"
#include "matmul_formats.clh"

#define GT_R 64
#define GT_P 64
#define GT_KC 2                  // chunks per K step
#define GT_K (GT_KC * CHUNK)     // 64 columns
#define WS_LD (GT_R + 4)         // float4-aligned rows of ws
#define XS_LD (GT_P + 1)

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
    uint n_expert, uint tiles_per_expert) {
  __local float ws[GT_K * WS_LD];
  __local float xs[GT_K * XS_LD];
  __local int tok[GT_P];
  const uint lid = get_local_id(0);
  const uint e = get_group_id(1) / tiles_per_expert, t = get_group_id(1) % tiles_per_expert;
  if (e > n_expert) return;
  const uint seg0 = lower_bound_expert(pair_expert, n_pairs, n_expert, e);
  const uint seg1 = lower_bound_expert(pair_expert, n_pairs, n_expert, e + 1);
  const uint p0 = seg0 + t * GT_P;
  if (p0 >= seg1) return;  // the whole group: p0 is uniform
  const uint np = min((uint)GT_P, seg1 - p0);
  const uint r0 = get_group_id(0) * GT_R;
  if (e == n_expert) {  // invalid expert ids
    for (uint i = lid; i < np * GT_R; i += 256) {
      const uint j = i / GT_R, r = r0 + i % GT_R;
      if (r < rows) y[y_off + (ulong)(p0 + j) * rows + r] = NAN;
    }
    return;
  }
  if (lid < GT_P) tok[lid] = lid < np ? pair_token[p0 + lid] : -1;
  barrier(CLK_LOCAL_MEM_FENCE);

  const uint tx = lid % 16, ty = lid / 16;
  float acc[4][4];
  for (uint i = 0; i < 4; ++i)
    for (uint j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  const uint nchunks = bpr * CHUNKS_PER_BLOCK;
  // The decoding item's row (clamped: rows past the end decode a valid row, never stored).
  const uint dr = lid % GT_R, dk = lid / GT_R;  // dk < GT_KC for the decoders (lid < 128)
  const ulong rblk = ((ulong)e * rows + min(r0 + dr, rows - 1)) * bpr;

  for (uint k0 = 0; k0 < nchunks; k0 += GT_KC) {
    if (dk < GT_KC) {
      const uint k = k0 + dk;
      float16 w0 = (float16)(0.0f), w1 = (float16)(0.0f);
      if (k < nchunks) decode_chunk(body, head, rblk + k / CHUNKS_PER_BLOCK, k % CHUNKS_PER_BLOCK, &w0, &w1);
      float wv[CHUNK];
      vstore16(w0, 0, wv);
      vstore16(w1, 1, wv);
      for (uint c = 0; c < CHUNK; ++c) ws[(dk * CHUNK + c) * WS_LD + dr] = wv[c];
    }
    // x: GT_P pairs x GT_K columns, consecutive items on consecutive columns of one pair.
    for (uint i = lid; i < GT_P * GT_K; i += 256) {
      const uint j = i / GT_K, c = i % GT_K;
      const uint col = k0 * CHUNK + c;
      const int tk = tok[j];
      float v = 0.0f;
      if (tk >= 0 && (uint)tk < x_rows && col < cols) v = x[x_off + (ulong)tk * cols + col];
      xs[c * XS_LD + j] = v;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint c = 0; c < GT_K; ++c) {
      const float4 a = vload4(0, ws + c * WS_LD + ty * 4);
      const float4 b = vload4(0, xs + c * XS_LD + tx * 4);
      acc[0][0] = fma(a.x, b.x, acc[0][0]);
      acc[0][1] = fma(a.x, b.y, acc[0][1]);
      acc[0][2] = fma(a.x, b.z, acc[0][2]);
      acc[0][3] = fma(a.x, b.w, acc[0][3]);
      acc[1][0] = fma(a.y, b.x, acc[1][0]);
      acc[1][1] = fma(a.y, b.y, acc[1][1]);
      acc[1][2] = fma(a.y, b.z, acc[1][2]);
      acc[1][3] = fma(a.y, b.w, acc[1][3]);
      acc[2][0] = fma(a.z, b.x, acc[2][0]);
      acc[2][1] = fma(a.z, b.y, acc[2][1]);
      acc[2][2] = fma(a.z, b.z, acc[2][2]);
      acc[2][3] = fma(a.z, b.w, acc[2][3]);
      acc[3][0] = fma(a.w, b.x, acc[3][0]);
      acc[3][1] = fma(a.w, b.y, acc[3][1]);
      acc[3][2] = fma(a.w, b.z, acc[3][2]);
      acc[3][3] = fma(a.w, b.w, acc[3][3]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  for (uint j = 0; j < 4; ++j) {
    const uint jj = tx * 4 + j;
    if (jj >= np) continue;
    const int tk = tok[jj];
    const bool ok = tk >= 0 && (uint)tk < x_rows;
    for (uint i = 0; i < 4; ++i) {
      const uint r = r0 + ty * 4 + i;
      if (r < rows) y[y_off + (ulong)(p0 + jj) * rows + r] = ok ? acc[i][j] : NAN;
    }
  }
}
