// Device op of Gated DeltaNet (cl_kernels/deltanet.cl): the gated delta-rule state update with
// its L2-normalized q/k, sigmoid beta and softplus gate, over a batch of sequences (one-token runs
// are decode steps, longer runs prefill chunks, run token by token). The short conv before it and
// the gated norm after it are SsmOps (ssm.h). Reference: host/ops/reference/deltanet.h.
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/activation.h"
#include "host/ops/device/launch.h"
#include "host/ops/device/ssm.h"

namespace tessera::ops {

// As reference::DeltaNetShape.
struct DeltaNetDims {
  uint32_t n_k_head = 0, n_v_head = 0, d_k = 0, d_v = 0;
};

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class DeltaNetOps {
 public:
  // scan_form as SsmOps': one value row per work item (GPUs) or 8 (CPUs; when d_v is a multiple
  // of 8), kAuto by device type.
  explicit DeltaNetOps(const Device& device, ScanForm scan_form = ScanForm::kAuto);

  // reference::deltanet_recurrent over every sequence of `batch`: q and k rows of n_k_head * d_k,
  // v and o rows of n_v_head * d_v, ba rows of 2 * n_v_head (Qwen3-Next's beta/alpha layout), A
  // and dt_bias n_v_head floats from their offsets; the state [d_k][n_v_head * d_v] per slot.
  // Throws std::invalid_argument on a bad shape or stride.
  void recurrent(const DeltaNetDims& dims, const Strided& q, const Strided& k, const Strided& v,
                 const Strided& ba, cl_mem a, uint32_t a_off, cl_mem dt_bias, uint32_t dt_bias_off,
                 float eps, const RecurrentBatch& batch, const Strided& o, const Events& ev = {});

 private:
  const Device* device_;
  bool eight_;  // ScanForm::kEightChannels (resolved)
  ClKernel recurrent_, recurrent8_;
};

}  // namespace tessera::ops
