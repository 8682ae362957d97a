// Device MoE routing (cl_kernels/route.cl): router logits -> top-k expert ids and weights per
// token.
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/launch.h"
#include "host/ops/reference/routing.h"

namespace tessera::ops {

using reference::GatingFunc;
using reference::RoutingConfig;

// Kernel shape: one work item per token scanning serially (CPUs: a work-group is one core anyway),
// or one work-group per token with tree reductions (GPUs: a serial scan of 128+ experts costs tens
// of microseconds per layer there). kSplit is kGroup whose fused norm_route spreads a token's
// router over several work groups (the last one to finish routes; it needs a logits scratch
// buffer and at most kSplitMaxTokens tokens, else the kGroup kernel runs). Same results either
// way; the matrix checks each on every device.
enum class RoutingVariant { kAuto, kSerial, kGroup, kSplit };

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class RoutingOps {
 public:
  // kAuto: kSerial on CPU devices, kSplit elsewhere.
  explicit RoutingOps(const Device& device, RoutingVariant variant = RoutingVariant::kAuto);

  // For each of n_tokens rows of n_expert logits (from l_off): probabilities (softmax or sigmoid),
  // the k = config.n_expert_used best experts (ties to the lower index), their weights normalized
  // and scaled as config says. ids: int32 [token][k] from ids_off; weights: f32 [token][k] from
  // w_off. Same semantics as reference::route_experts. Throws std::invalid_argument when k is not
  // in [1, n_expert].
  void route(cl_mem logits, uint32_t l_off, uint32_t n_tokens, uint32_t n_expert,
             const RoutingConfig& config, cl_mem ids, uint32_t ids_off, cl_mem weights,
             uint32_t w_off, const Events& ev = {});

  // The start of a MoE block fused into one launch (route.cl norm_route_topk_f32): xn = RMSNorm(x)
  // * norm_w for n_tokens rows of n floats (x from x_off, xn from xn_off), router logits of xn by
  // an F32 router (n_expert rows of r_ld floats: a repacked F32 weight's body), then route() on
  // them. can_norm_route says whether the device's local memory holds the row; the caller runs
  // rms_norm + matmul + route otherwise. logits: scratch of n_tokens x n_expert floats that the
  // kSplit kernel writes (may be null: the one-group kernel then runs).
  bool can_norm_route(uint32_t n, uint32_t n_expert) const;
  void norm_route(cl_mem x, uint32_t x_off, cl_mem norm_w, float eps, uint32_t n, cl_mem xn,
                  uint32_t xn_off, cl_mem router, uint32_t r_ld, uint32_t n_tokens,
                  uint32_t n_expert, const RoutingConfig& config, cl_mem ids, uint32_t ids_off,
                  cl_mem weights, uint32_t w_off, cl_mem logits, const Events& ev = {});

  // Tokens one kSplit launch takes (its counters: one int32 per token); larger steps run the
  // one-group kernel, which the split's redundant norms made slower at prefill (H200, 512-token
  // steps: 549 vs 769 us per 16 layers) while the split is faster at decode (229-261 -> 178-199).
  static constexpr uint32_t kSplitMaxTokens = 64;

 private:
  size_t norm_route_local() const;
  const Device* device_;
  RoutingVariant variant_;
  ClKernel route_, norm_route_, norm_route_split_;
  // kSplit's per-token counters, zero between launches (the last work group resets its token's).
  ClMem split_counters_;
};

}  // namespace tessera::ops
