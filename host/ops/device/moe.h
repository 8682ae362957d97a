// Device MoE combine (cl_kernels/moe.cl): weighted sum of each token's expert outputs, and the
// gated shared expert's add.
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class MoeOps {
 public:
  explicit MoeOps(const Device& device);

  // For each token t < n_tokens and feature i < n:
  //   out[t][i] (+)= sum_{p in [offsets[t], offsets[t+1])} weights[w_off + p] * y[row(p)][i]
  // with row(p) = rows[p] when `rows` is non-null, else p. Offsets are int32 (n_tokens + 1
  // entries). `accumulate` adds into out (the residual stream); otherwise out is overwritten.
  // Asynchronous.
  void combine(cl_mem out, uint32_t out_off, cl_mem y, uint32_t y_off, cl_mem weights,
               uint32_t w_off, cl_mem offsets, cl_mem rows, uint32_t n_tokens, uint32_t n,
               bool accumulate, const Events& ev = {});

  // combine(x, ..., rows, accumulate = true) fused with the next RMSNorm: then
  // xn[t] = x[t] / sqrt(mean(x[t]^2) + eps) * norm_w (norm_w: n floats). One launch.
  void combine_norm(cl_mem x, uint32_t x_off, cl_mem y, uint32_t y_off, cl_mem weights,
                    uint32_t w_off, cl_mem offsets, cl_mem rows, uint32_t n_tokens, uint32_t n,
                    cl_mem norm_w, float eps, cl_mem xn, uint32_t xn_off, const Events& ev = {});

  // Groups n_pairs (token, expert) pairs by expert (stable): pair p is token p / k choosing
  // ids[p]; sorted_token / sorted_expert get the pairs in expert order (ids outside
  // [0, n_expert) last) and row[p] the position of pair p there (the `rows` of combine). All
  // int32 [n_pairs]. One launch (one work group).
  void group_pairs(cl_mem ids, uint32_t n_pairs, uint32_t k, uint32_t n_expert, cl_mem sorted_token,
                   cl_mem sorted_expert, cl_mem row, const Events& ev = {});

  // A gated shared expert (qwen2moe): x[t] += sigmoid(xn[t] . gate) * s[t] for n_tokens rows of n
  // floats (gate: n floats). One launch.
  void shared_gate_add(cl_mem x, uint32_t x_off, cl_mem s, uint32_t s_off, cl_mem xn,
                       uint32_t xn_off, cl_mem gate, uint32_t n_tokens, uint32_t n,
                       const Events& ev = {});

 private:
  size_t row_group_size() const;  // work items per token of the one-group-per-token kernels
  const Device* device_;
  ClKernel combine_, combine_norm_, shared_gate_, group_pairs_;
};

}  // namespace tessera::ops
