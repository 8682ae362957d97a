// Element-wise and per-row ops on f32 activations: residual add, scaled accumulate (MoE combine),
// a bias added to every row (projection biases), argmax per row (greedy sampling on the device).
// Layout: contiguous f32 from element offsets; rows back to back.
#include "common.clh"
#include "rows.clh"

// out = a + b over n elements (out may be a or b).
__kernel void add_f32(__global const float* a, uint a_off, __global const float* b, uint b_off,
                      __global float* out, uint o_off, ulong n) {
  FOR_ALL(i, n) out[o_off + i] = a[a_off + i] + b[b_off + i];
}

// x[x_off + i] *= s over n elements (Granite's embedding and residual multipliers).
__kernel void scale_f32(__global float* x, uint x_off, float s, ulong n) {
  FOR_ALL(i, n) x[x_off + i] *= s;
}

// y[r][c] += w[w_off + r * w_stride] * x[r][c]: one weight per row, e.g. expert slot j of a
// [token][k] weight matrix (w_off = j, w_stride = k) when combining MoE expert outputs.
__kernel void scaled_add_f32(__global float* y, uint y_off, __global const float* x, uint x_off,
                             __global const float* w, uint w_off, uint w_stride, uint cols) {
  const size_t r = get_global_id(1);  // NDRange (column items, rows)
  y += y_off + r * cols;
  x += x_off + r * cols;
  const float wr = w[w_off + r * w_stride];
  FOR_COLS(c, cols) y[c] += wr * x[c];
}

// y[y_off + r * ld + c] += b[b_off + c] for c < cols: one bias vector added to every row (rows `ld`
// floats apart, e.g. the q|k|v biases on a step's projection rows).
__kernel void add_row_bias_f32(__global float* y, uint y_off, uint ld, __global const float* b,
                               uint b_off, uint cols) {
  const size_t r = get_global_id(1);  // NDRange (column items, rows)
  y += y_off + r * ld;
  b += b_off;
  FOR_COLS(c, cols) y[c] += b[c];
}

// y[r][c] += b[ids[r]][c]: a per-expert bias on (token, expert) pair rows (gpt-oss). NDRange
// (column items, rows).
__kernel void add_pair_bias_f32(__global float* y, uint y_off, uint ld, __global const int* ids,
                                uint ids_off, __global const float* b, uint cols) {
  const size_t r = get_global_id(1);
  y += y_off + r * ld;
  b += (size_t)ids[ids_off + r] * cols;
  FOR_COLS(c, cols) y[c] += b[c];
}

// ids[r] = index of the largest x[r][i]; ties go to the lowest index; NaNs are skipped (a row of
// NaNs gives 0). One work-group per row, power-of-two size.
__kernel void argmax_rows_f32(__global const float* x, uint x_off, uint n, __global int* ids,
                              uint ids_off, __local float* best_v, __local uint* best_i) {
  const size_t row = get_group_id(0);
  x += x_off + row * n;
  float bv = -INFINITY;
  uint bi = n;
  FOR_ROW(i, n) {
    const float v = x[i];
    if (v > bv || (v == bv && i < bi)) {
      bv = v;
      bi = i;
    }
  }
  const uint lid = get_local_id(0);
  best_v[lid] = bv;
  best_i[lid] = bi;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint s = get_local_size(0) / 2; s > 0; s >>= 1) {
    if (lid < s) {
      const float ov = best_v[lid + s];
      const uint oi = best_i[lid + s];
      if (oi < n && (bi == n || ov > bv || (ov == bv && oi < bi))) {
        bv = ov;
        bi = oi;
        best_v[lid] = bv;
        best_i[lid] = bi;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (lid == 0) ids[ids_off + row] = bi < n ? (int)bi : 0;
}
