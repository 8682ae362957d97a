// Mixture-of-Experts combine: each token's expert outputs, weighted by the router, summed into the
// residual stream (or a partial sum). Layout: y holds one row of n floats per (token, expert) pair;
// the pairs of token t are entries [offsets[t], offsets[t+1]) of `rows` (the y row of each entry;
// when use_rows == 0 entry p is y row p) and `weights`. out is [token][n].
#include "common.clh"
#include "rows.clh"

// One work item per (feature, token): a contiguous run of features per work-group row, so GPUs
// coalesce and CPU work-groups stream.
__kernel void moe_combine(__global float* out, uint out_off, __global const float* y, uint y_off,
                          __global const float* weights, uint w_off, __global const int* offsets,
                          __global const int* rows, int use_rows, uint n, int accumulate) {
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

// moe_combine (accumulating; entry p is y row rows[p], or row p when use_rows == 0) fused with the
// next layer's RMSNorm: x += sum_p weights[p] * y[p], then xn = x / sqrt(mean(x^2) + eps) * norm_w.
// One work group per token (a power-of-two size; CPUs: one item); scratch holds the local size in
// floats.
__kernel void moe_combine_norm(__global float* x, uint x_off, __global const float* y, uint y_off,
                               __global const float* weights, uint w_off,
                               __global const int* offsets, __global const int* rows, int use_rows,
                               uint n, __global const float* norm_w, float eps, __global float* xn,
                               uint xn_off, __local float* scratch) {
  const size_t t = get_group_id(0);
  const int begin = offsets[t], end = offsets[t + 1];
  __global float* xr = x + x_off + t * n;
  SquareSum sq = {0.0f, 0.0f};
  FOR_ROW(i, n) {
    float acc = 0.0f;
    for (int p = begin; p < end; ++p)
      acc += weights[w_off + p] * y[y_off + (size_t)(use_rows ? rows[p] : p) * n + i];
    const float v = xr[i] + acc;
    xr[i] = v;
    add_square(&sq, v);
  }
  const float scale = rms_scale(sq, n, eps, scratch);
  FOR_ROW(i, n) xn[xn_off + t * n + i] = xr[i] * scale * norm_w[i];
}

// A gated shared expert (qwen2moe): x[t] += sigmoid(xn[t] . gate) * s[t], with s the shared
// expert's output rows and xn the FFN's normed input rows, all [token][n]. One work group per token
// (a power-of-two size; CPUs: one item); scratch holds the local size in floats.
__kernel void moe_shared_gate_add(__global float* x, uint x_off, __global const float* s,
                                  uint s_off, __global const float* xn, uint xn_off,
                                  __global const float* gate, uint n, __local float* scratch) {
  const size_t t = get_group_id(0);
  __global const float* xr = xn + xn_off + t * n;
  float dot = 0.0f;
  FOR_ROW(i, n) dot += xr[i] * gate[i];
  const float g = 1.0f / (1.0f + exp(-work_group_sum(dot, scratch)));
  __global float* o = x + x_off + t * n;
  __global const float* sr = s + s_off + t * n;
  FOR_ROW(i, n) o[i] += g * sr[i];
}

// Groups a step's (token, expert) pairs by expert, a stable counting sort, so the expert matmuls
// decode each expert's weights once per tile of its tokens instead of once per pair. Pair p is
// token p / k choosing expert ids[p]; an id outside [0, n_expert) sorts last (the expert matmul
// then writes NaN for it). Outputs (n_pairs int32 each): sorted_token[q] and sorted_expert[q] of
// the q-th pair in expert order, and row[p], the position pair p went to. One work group, one pair
// per item per round: the histogram by local atomics, a prefix sum, then each round's pairs placed
// at their bucket's next position plus their rank among the round's earlier pairs of that bucket
// (so the order within a bucket is the pairs' order: the result is deterministic). counts holds
// n_expert + 2 ints; the local size is at most GROUP_ROUND.
#define GROUP_ROUND 256
inline uint pair_bucket(int id, uint n_expert) {
  return (id >= 0 && (uint)id < n_expert) ? (uint)id : n_expert;
}

__kernel void moe_group_pairs(__global const int* ids, uint n_pairs, uint k, uint n_expert,
                              __global int* sorted_token, __global int* sorted_expert,
                              __global int* row, __local int* counts) {
  __local int round_bucket[GROUP_ROUND];
  const uint lid = get_local_id(0), size = get_local_size(0);
  const uint buckets = n_expert + 1;
  for (uint e = lid; e <= buckets; e += size) counts[e] = 0;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint p = lid; p < n_pairs; p += size)
    atomic_inc(&counts[pair_bucket(ids[p], n_expert) + 1]);
  barrier(CLK_LOCAL_MEM_FENCE);
  if (lid == 0)
    for (uint e = 1; e <= buckets; ++e) counts[e] += counts[e - 1];
  // counts[e] is now bucket e's next position.
  for (uint base = 0; base < n_pairs; base += size) {
    const uint p = base + lid;
    const bool live = p < n_pairs;
    const int id = live ? ids[p] : 0;
    const int b = live ? (int)pair_bucket(id, n_expert) : -1;
    barrier(CLK_LOCAL_MEM_FENCE);  // the previous round's counts are final
    round_bucket[lid] = b;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (live) {
      int rank = 0;
      for (uint j = 0; j < lid; ++j) rank += round_bucket[j] == b;
      const int q = counts[b] + rank;
      sorted_token[q] = (int)(p / k);
      sorted_expert[q] = id;
      row[p] = q;
    }
    barrier(CLK_LOCAL_MEM_FENCE);  // every item has read counts before they move on
    if (live) atomic_inc(&counts[b]);
  }
}
