// MoE routing: router logits -> probabilities (softmax over experts, or independent sigmoids) ->
// top-k experts (descending probability, ties to the lower index, as a stable sort) -> weights,
// optionally normalized by their sum (clamped below at 2^-14 as llama.cpp) and scaled.
// Layout: logits[token][n_expert] from l_off; ids[token][k] (int32) and weights[token][k] (f32).
// One work item per token: n_expert and k are small (<= a few hundred / 16) and this runs once per
// layer, so a serial scan beats a reduction's barriers.
#include "common.clh"
#include "route.clh"
#include "rows.clh"

__kernel void route_topk_f32(__global const float* logits, uint l_off, uint n_expert, uint k,
                             uint sigmoid_gating, uint normalize, float weight_scale,
                             __global int* ids, uint ids_off, __global float* weights, uint w_off,
                             uint n_tokens) {
  const uint t = get_global_id(0);
  if (t >= n_tokens) return;
  __global const float* l = logits + l_off + (size_t)t * n_expert;
  ids += ids_off + (size_t)t * k;
  weights += w_off + (size_t)t * k;
#define LG_GLOBAL(e) l[e]
  ROUTE_SERIAL(LG_GLOBAL, n_expert, k, sigmoid_gating, normalize, weight_scale, ids, weights);
#undef LG_GLOBAL
}

// The same routing with one work-group per token (GPUs): items stride over the experts, probabilities
// go to local memory, and each of the k selections is a (value, index) tree reduction; a chosen
// expert is marked with -1 (probabilities are >= 0). Local size: a power of two.
// probs: n_expert floats; red_v / red_i: local-size floats / ints.
__kernel void route_topk_group_f32(__global const float* logits, uint l_off, uint n_expert, uint k,
                                   uint sigmoid_gating, uint normalize, float weight_scale,
                                   __global int* ids, uint ids_off, __global float* weights,
                                   uint w_off, __local float* probs, __local float* red_v,
                                   __local int* red_i) {
  const size_t t = get_group_id(0);
  const uint lid = get_local_id(0);
  const uint L = get_local_size(0);
  __global const float* l = logits + l_off + t * n_expert;
  ids += ids_off + t * k;
  weights += w_off + t * k;
  float m = -INFINITY;
  float inv = 1.0f;
  if (!sigmoid_gating) {
    for (uint e = lid; e < n_expert; e += L) m = fmax(m, l[e]);
    m = work_group_max(m, red_v);
    float s = 0.0f;
    for (uint e = lid; e < n_expert; e += L) s += exp(l[e] - m);
    inv = 1.0f / work_group_sum(s, red_v);
  }
  for (uint e = lid; e < n_expert; e += L) probs[e] = router_prob(l[e], m, inv, sigmoid_gating);
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint j = 0; j < k; ++j) {
    float bv = -INFINITY;
    int bi = -1;
    for (uint e = lid; e < n_expert; e += L) {
      const float p = probs[e];
      if (p >= 0.0f && (bi < 0 || p > bv)) {  // ascending e: ties keep the lower index
        bv = p;
        bi = (int)e;
      }
    }
    red_v[lid] = bv;
    red_i[lid] = bi;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = L / 2; s > 0; s >>= 1) {
      if (lid < s) {
        const float ov = red_v[lid + s];
        const int oi = red_i[lid + s];
        if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
          bv = ov;
          bi = oi;
          red_v[lid] = bv;
          red_i[lid] = bi;
        }
      }
      barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
      ids[j] = bi;
      weights[j] = bi >= 0 ? bv : 0.0f;
      if (bi >= 0) probs[bi] = -1.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  if (lid == 0) finish_topk_weights(weights, k, normalize, weight_scale);
}

// The work group's RMSNorm of row xr (n floats) times norm_w into local xs, and into xo where
// `store` (every item of the group must call it; part: local-size floats of scratch).
inline void norm_row_to_local(__global const float* xr, __global const float* norm_w, float eps,
                              uint n, __local float* xs, __global float* xo, bool store,
                              __local float* part) {
  SquareSum acc = {0.0f, 0.0f};
  FOR_ROW(i, n) add_square(&acc, xr[i]);
  const float scale = rms_scale(acc, n, eps, part);
  FOR_ROW(i, n) {
    const float v = xr[i] * scale * norm_w[i];
    xs[i] = v;
    if (store) xo[i] = v;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
}

// The start of a MoE block in one launch: RMSNorm of each token's residual row x (written to xn,
// which the experts read), the router's logits of the normed row (F32 router rows `r_ld` floats
// apart; r_ld a multiple of 4), and the routing of route_topk_f32. One work group per token (CPUs: one work item);
// local memory: xs[n] (the normed row), part[local size] and lg[n_expert]. G items share each
// expert's dot product (coalesced on GPUs), then one item routes serially as route_topk_f32.
__kernel void norm_route_topk_f32(__global const float* x, uint x_off, __global const float* norm_w,
                                  float eps, uint n, __global float* xn, uint xn_off,
                                  __global const float* router, uint r_ld, uint n_expert, uint k,
                                  uint sigmoid_gating, uint normalize, float weight_scale,
                                  __global int* ids, uint ids_off, __global float* weights,
                                  uint w_off, __local float* xs, __local float* part,
                                  __local float* lg) {
  const size_t t = get_group_id(0);
  const uint lid = get_local_id(0);
  const uint L = get_local_size(0);
  norm_row_to_local(x + x_off + t * n, norm_w, eps, n, xs, xn + xn_off + t * n, true, part);
  uint G = 1;
  while (G * 2 * n_expert <= L) G *= 2;
  const uint per = L / G, sub = lid % G;
  for (uint e0 = 0; e0 < n_expert; e0 += per) {
    const uint e = e0 + lid / G;
    float p = 0.0f;
    if (e < n_expert) {
      // float4 steps, unrolled: a GPU lane keeps several loads in flight (one work group per
      // token makes this latency-bound otherwise). Rows are 16-byte aligned (r_ld % 4 == 0).
      __global const float* wr = router + (size_t)e * r_ld;
      const uint n4 = n / 4;
      float4 p4 = (float4)(0.0f);
#pragma unroll 8
      for (uint i = sub; i < n4; i += G) p4 += vload4(i, wr) * vload4(i, xs);
      p = (p4.x + p4.y) + (p4.z + p4.w);
      for (uint i = n4 * 4 + sub; i < n; i += G) p += wr[i] * xs[i];
    }
    part[lid] = p;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (sub == 0 && e < n_expert) {
      float acc = 0.0f;
      for (uint g = 0; g < G; ++g) acc += part[lid + g];
      lg[e] = acc;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  route_group_tail(lg, part, (__local int*)xs, n_expert, k, sigmoid_gating, normalize,
                   weight_scale, ids + ids_off + t * k, weights + w_off + t * k);
}

// norm_route_topk_f32 spread over several work groups per token (GPUs, RoutingVariant::kSplit):
// one work group on one compute unit read the whole router (n_expert x n floats) at decode, a
// latency-bound ~15 us per layer on an H200. Grid (local size x n_groups, n_tokens): work group w of
// token t takes experts [w epw, w epw + epw), G = local size / epw items sharing each expert's dot
// product (a power of two). Each group issues its router loads (up to SPLIT_PF float4 per item)
// before the row's RMSNorm, computes the norm itself (group 0 also stores xn), writes its logits to
// `logits` [token][n_expert] from l_off, fences and bumps the token's counter; the group that brings
// it to n_groups reads every logit back through a volatile pointer, resets the counter for the next
// launch and routes the token (route_group_tail). No group waits for another. Local memory as
// norm_route_topk_f32's.
#define SPLIT_PF 8
__kernel void norm_route_topk_split_f32(
    __global const float* x, uint x_off, __global const float* norm_w, float eps, uint n,
    __global float* xn, uint xn_off, __global const float* router, uint r_ld, uint n_expert,
    uint k, uint sigmoid_gating, uint normalize, float weight_scale, __global int* ids,
    uint ids_off, __global float* weights, uint w_off, __local float* xs, __local float* part,
    __local float* lg, uint epw, __global float* logits, uint l_off,
    __global volatile int* counters) {
  __local int is_last;
  const size_t t = get_group_id(1);
  const uint w = get_group_id(0), n_groups = get_num_groups(0);
  const uint lid = get_local_id(0), L = get_local_size(0);
  const uint G = L / epw, sub = lid % G;
  const uint e = w * epw + lid / G;
  const uint n4 = n / 4;
  // Rows are 16-byte aligned (r_ld % 4 == 0).
  __global const float* wr = router + (size_t)min(e, n_expert - 1) * r_ld;
  float4 wv[SPLIT_PF];
#pragma unroll
  for (uint j = 0; j < SPLIT_PF; ++j) {
    const uint i = sub + j * G;
    wv[j] = (e < n_expert && i < n4) ? vload4(i, wr) : (float4)(0.0f);
  }
  norm_row_to_local(x + x_off + t * n, norm_w, eps, n, xs, xn + xn_off + t * n, w == 0, part);
  float4 p4 = (float4)(0.0f);
#pragma unroll
  for (uint j = 0; j < SPLIT_PF; ++j) {
    const uint i = sub + j * G;
    if (i < n4) p4 += wv[j] * vload4(i, xs);
  }
  if (e < n_expert)
    for (uint i = sub + SPLIT_PF * G; i < n4; i += G) p4 += vload4(i, wr) * vload4(i, xs);
  float p = (p4.x + p4.y) + (p4.z + p4.w);
  if (e < n_expert)
    for (uint i = n4 * 4 + sub; i < n; i += G) p += wr[i] * xs[i];
  part[lid] = p;
  barrier(CLK_LOCAL_MEM_FENCE);
  for (uint s = G / 2; s > 0; s >>= 1) {
    if (sub < s) part[lid] += part[lid + s];
    barrier(CLK_LOCAL_MEM_FENCE);
  }
  __global float* lt = logits + l_off + t * n_expert;
  if (sub == 0 && e < n_expert) lt[e] = part[lid];
  barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
  if (lid == 0) {
    mem_fence(CLK_GLOBAL_MEM_FENCE);
    const int last = atomic_inc(counters + t) == (int)n_groups - 1;
    if (last) atomic_xchg(counters + t, 0);
    is_last = last;
    mem_fence(CLK_GLOBAL_MEM_FENCE);
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  if (!is_last) return;
  __global volatile const float* lv = (__global volatile const float*)lt;
  for (uint i = lid; i < n_expert; i += L) lg[i] = lv[i];
  barrier(CLK_LOCAL_MEM_FENCE);
  route_group_tail(lg, part, (__local int*)xs, n_expert, k, sigmoid_gating, normalize,
                   weight_scale, ids + ids_off + t * k, weights + w_off + t * k);
}

// Horizontal sum of a float16, pairwise.
inline float hsum16(float16 v) {
  const float8 a = v.lo + v.hi;
  const float4 b = a.lo + a.hi;
  return (b.x + b.y) + (b.z + b.w);
}

// norm_route_topk_f32 for one work item per token (CPUs: RoutingVariant::kSerial): the row's
// sum of squares, the normed row and each expert's dot product in 16-wide vectors with
// independent accumulators, no barriers. The float4 chain of the work-group kernel cost ~8 us
// per token and layer on PoCL. Same arguments (part unused); launched with local size 1.
__kernel void norm_route_topk_serial_f32(
    __global const float* x, uint x_off, __global const float* norm_w, float eps, uint n,
    __global float* xn, uint xn_off, __global const float* router, uint r_ld, uint n_expert,
    uint k, uint sigmoid_gating, uint normalize, float weight_scale, __global int* ids,
    uint ids_off, __global float* weights, uint w_off, __local float* xs, __local float* part,
    __local float* lg) {
  const size_t t = get_group_id(0);
  __global const float* xr = x + x_off + t * n;
  __global float* xo = xn + xn_off + t * n;
  const uint n16 = n / 16, tail = n16 * 16;
  float16 s0 = (float16)(0.0f), s1 = (float16)(0.0f);
  uint i = 0;
  for (; i + 1 < n16; i += 2) {
    const float16 a = vload16(i, xr), b = vload16(i + 1, xr);
    s0 = fma(a, a, s0);
    s1 = fma(b, b, s1);
  }
  if (i < n16) {
    const float16 a = vload16(i, xr);
    s0 = fma(a, a, s0);
  }
  float sum = hsum16(s0 + s1);
  for (uint j = tail; j < n; ++j) sum += xr[j] * xr[j];
  const float scale = 1.0f / sqrt(sum / (float)n + eps);
  for (uint j = 0; j < n16; ++j) {
    const float16 v = vload16(j, xr) * scale * vload16(j, norm_w);
    vstore16(v, j, xs);
    vstore16(v, j, xo);
  }
  for (uint j = tail; j < n; ++j) {
    const float v = xr[j] * scale * norm_w[j];
    xs[j] = v;
    xo[j] = v;
  }
  for (uint e = 0; e < n_expert; ++e) {
    __global const float* wr = router + (size_t)e * r_ld;
    float16 a0 = (float16)(0.0f), a1 = (float16)(0.0f), a2 = (float16)(0.0f),
            a3 = (float16)(0.0f);
    uint j = 0;
    for (; j + 3 < n16; j += 4) {
      a0 = fma(vload16(j, wr), vload16(j, xs), a0);
      a1 = fma(vload16(j + 1, wr), vload16(j + 1, xs), a1);
      a2 = fma(vload16(j + 2, wr), vload16(j + 2, xs), a2);
      a3 = fma(vload16(j + 3, wr), vload16(j + 3, xs), a3);
    }
    for (; j < n16; ++j) a0 = fma(vload16(j, wr), vload16(j, xs), a0);
    float p = hsum16((a0 + a1) + (a2 + a3));
    for (uint c = tail; c < n; ++c) p += wr[c] * xs[c];
    lg[e] = p;
  }
  ids += ids_off + t * k;
  weights += w_off + t * k;
#define LG_LOCAL(e) lg[e]
  ROUTE_SERIAL(LG_LOCAL, n_expert, k, sigmoid_gating, normalize, weight_scale, ids, weights);
#undef LG_LOCAL
}
