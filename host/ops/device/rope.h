// Device RoPE (cl_kernels/rope.cl): normal and NeoX, partial rotary, positions in a device buffer.
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/launch.h"
#include "host/ops/reference/rope.h"

namespace tessera::ops {

using reference::RopeMode;

struct RopeShape {
  uint32_t n_tokens = 0;
  uint32_t n_head = 0;
  uint32_t head_dim = 0;
  uint32_t n_rot = 0;         // even, <= head_dim; dims past it pass through
  uint32_t token_stride = 0;  // floats between tokens; 0: n_head * head_dim (packed)
  float freq_base = 10000.0f;
  RopeMode mode = RopeMode::kNormal;
};

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class RopeOps {
 public:
  explicit RopeOps(const Device& device);

  // Rotates x[token][head][head_dim] (from element offset x_off) in place; pos holds one int32
  // position per token from pos_off. Throws std::invalid_argument on a bad shape.
  void rope(cl_mem x, uint32_t x_off, cl_mem pos, uint32_t pos_off, const RopeShape& shape,
            const Events& ev = {});

 private:
  const Device* device_;
  ClKernel rope_;
};

}  // namespace tessera::ops
