// Device softmax over rows (cl_kernels/softmax.cl).
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class SoftmaxOps {
 public:
  explicit SoftmaxOps(const Device& device);

  // out[r] = softmax(x[r]) for `rows` rows of n floats from the element offsets; out may be x.
  void softmax_rows(cl_mem x, uint32_t x_off, cl_mem out, uint32_t out_off, uint32_t rows,
                    uint32_t n, const Events& ev = {});

 private:
  const Device* device_;
  ClKernel softmax_;
};

}  // namespace tessera::ops
