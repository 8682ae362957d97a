// Device op of Gated DeltaNet (cl_kernels/deltanet.cl): the gated delta-rule state update with
// its L2-normalized q/k, sigmoid beta and softplus gate, over a batch of sequences (one-token runs
// are decode steps, longer runs prefill chunks, run token by token or chunk-wise). The short conv
// before it and the gated norm after it are SsmOps (ssm.h). Reference:
// host/ops/reference/deltanet.h.
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
  static constexpr uint32_t kChunk = 32;  // cl_kernels/deltanet.cl DN_CHUNK

  // scan_form as SsmOps': one value row per work item (GPUs) or 8 (CPUs; when d_v is a multiple
  // of 8), kAuto by device type. prefill_form as SsmOps'; kAuto takes the chunked form on every
  // device (Qwen3-Next-80B's layer over a 256-token run, matrix row
  // deltanet/f32/chunk/16k32v/128x128/long256, 2026-12-03: H200 1.47 ms vs 11.4 ms token by
  // token; 16-core Xeon, PoCL 5.0, 12.5 vs 63 ms; 2-core PoCL 3.1 188 vs 280 ms).
  explicit DeltaNetOps(const Device& device, ScanForm scan_form = ScanForm::kAuto,
                       PrefillForm prefill_form = PrefillForm::kAuto);

  // reference::deltanet_recurrent over every sequence of `batch`: q and k rows of n_k_head * d_k,
  // v and o rows of n_v_head * d_v, ba rows of 2 * n_v_head (Qwen3-Next's beta/alpha layout), A
  // and dt_bias n_v_head floats from their offsets; the state [d_k][n_v_head * d_v] per slot.
  // Throws std::invalid_argument on a bad shape or stride.
  void recurrent(const DeltaNetDims& dims, const Strided& q, const Strided& k, const Strided& v,
                 const Strided& ba, cl_mem a, uint32_t a_off, cl_mem dt_bias, uint32_t dt_bias_off,
                 float eps, const RecurrentBatch& batch, const Strided& o, const Events& ev = {});

 private:
  const Device* device_;
  bool eight_;    // ScanForm::kEightChannels (resolved)
  bool chunked_;  // PrefillForm::kChunked (resolved)
  ClKernel recurrent_, recurrent8_, chunk_;

  // Tokens per launch when a batch runs chunk-wise (0: it runs token by token), and the items
  // per work-group.
  uint32_t chunk_window(const DeltaNetDims& s, const RecurrentBatch& batch, size_t& items) const;
};

}  // namespace tessera::ops
