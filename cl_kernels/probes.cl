// Device probes: streaming read bandwidth, fp32 throughput and launch latency.
// Layout: plain float4 buffers; `out` receives one value per work item so nothing is optimized away.
#include "common.clh"

// Coalesced read (GPUs): neighbouring work items read neighbouring float4s, grid-stride loop.
__kernel void read_coalesced(__global const float4* src, __global float* out, uint n4) {
  const uint gid = get_global_id(0);
  const uint stride = get_global_size(0);
  float4 acc = (float4)(0.0f);
  for (uint i = gid; i < n4; i += stride) acc += src[i];
  out[gid] = acc.x + acc.y + acc.z + acc.w;
}

// Chunked read (CPUs): each work item streams one contiguous range, which is what a CPU core's
// prefetcher wants; four independent accumulators keep the loads in flight.
__kernel void read_chunked(__global const float4* src, __global float* out, uint n4) {
  const uint gid = get_global_id(0);
  const uint items = get_global_size(0);
  const uint chunk = (n4 + items - 1) / items;
  const uint begin = min(gid * chunk, n4);
  const uint end = min(begin + chunk, n4);
  float4 a0 = (float4)(0.0f), a1 = a0, a2 = a0, a3 = a0;
  uint i = begin;
  for (; i + 4 <= end; i += 4) {
    a0 += src[i];
    a1 += src[i + 1];
    a2 += src[i + 2];
    a3 += src[i + 3];
  }
  for (; i < end; ++i) a0 += src[i];
  const float4 acc = (a0 + a1) + (a2 + a3);
  out[gid] = acc.x + acc.y + acc.z + acc.w;
}

// The same with 64-byte loads (float16), two accumulators: what the CPU matmul kernels' vector
// loads reach (2-core machine, PoCL 3.1: 28.7-29.0 GB/s vs read_chunked's 20.8-24.7 GB/s).
__kernel void read_chunked16(__global const float4* src, __global float* out, uint n4) {
  const uint gid = get_global_id(0);
  const uint items = get_global_size(0);
  const uint n16 = n4 / 4;  // the host's buffer is a multiple of 64 bytes
  const uint chunk = (n16 + items - 1) / items;
  const uint begin = min(gid * chunk, n16);
  const uint end = min(begin + chunk, n16);
  __global const float16* s = (__global const float16*)src;
  float16 a0 = (float16)(0.0f), a1 = a0;
  uint i = begin;
  for (; i + 2 <= end; i += 2) {
    a0 += s[i];
    a1 += s[i + 1];
  }
  for (; i < end; ++i) a0 += s[i];
  const float16 a = a0 + a1;
  const float8 b = a.lo + a.hi;
  const float4 c = b.lo + b.hi;
  out[gid] = c.x + c.y + c.z + c.w;
}

// fp32 throughput: 8 independent float4 FMA chains, `iters` rounds; 2 * 4 * 8 flops per round.
__kernel void fma_throughput(__global float* out, uint iters, float a, float b) {
  const uint gid = get_global_id(0);
  float4 x0 = (float4)(gid * 1e-7f), x1 = x0 + 0.1f, x2 = x0 + 0.2f, x3 = x0 + 0.3f;
  float4 x4 = x0 + 0.4f, x5 = x0 + 0.5f, x6 = x0 + 0.6f, x7 = x0 + 0.7f;
  for (uint i = 0; i < iters; ++i) {
    x0 = fma(x0, a, b); x1 = fma(x1, a, b); x2 = fma(x2, a, b); x3 = fma(x3, a, b);
    x4 = fma(x4, a, b); x5 = fma(x5, a, b); x6 = fma(x6, a, b); x7 = fma(x7, a, b);
  }
  const float4 s = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7));
  out[gid] = s.x + s.y + s.z + s.w;
}

// Launch latency: the smallest useful kernel.
__kernel void empty_kernel(__global float* out) {
  if (get_global_id(0) == 0) out[0] = 1.0f;
}
