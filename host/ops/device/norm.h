// Device RMSNorm (cl_kernels/norm.cl): per token, or per head with rows = tokens * heads.
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class NormOps {
 public:
  explicit NormOps(const Device& device);  // builds cl_kernels/norm.cl (program cache)

  // out[r][i] = x[r][i] / sqrt(mean(x[r]^2) + eps) * w[i] for `rows` rows of n floats from the
  // element offsets; w holds n floats. out may be x. Asynchronous on device.queue().
  void rms_norm(cl_mem x, uint32_t x_off, cl_mem w, uint32_t w_off, cl_mem out, uint32_t out_off,
                uint32_t rows, uint32_t n, float eps, const Events& ev = {});

 private:
  const Device* device_;
  ClKernel rms_norm_;
};

}  // namespace tessera::ops
