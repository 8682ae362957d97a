// Mixture-of-Experts combine: each token's expert outputs, weighted by the router, summed into the
// residual stream (or a partial sum). Layout: y holds one row of n floats per (token, expert) pair;
// the pairs of token t are entries [offsets[t], offsets[t+1]) of `rows` (the y row of each entry;
// when use_rows == 0 entry p is y row p) and `weights`. out is [token][n].
#include "common.clh"

// One work item per (feature, token): a contiguous run of features per work-group row, so GPUs
// coalesce and CPU work-groups stream.
__kernel void moe_combine(__global float* out, uint out_off,
                          __global const float* y, uint y_off,
                          __global const float* weights, uint w_off,
                          __global const int* offsets,
                          __global const int* rows, int use_rows,
                          uint n, int accumulate) {
  const uint i = get_global_id(0);
  const uint t = get_global_id(1);
  if (i >= n) return;
  const int begin = offsets[t], end = offsets[t + 1];
  float acc = 0.0f;
  for (int p = begin; p < end; ++p) {
    const int row = use_rows ? rows[p] : p;
    acc += weights[w_off + p] * y[y_off + (size_t)row * n + i];
  }
  __global float* o = out + out_off + (size_t)t * n + i;
  *o = accumulate ? *o + acc : acc;
}
