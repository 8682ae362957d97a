// Device RoPE (cl_kernels/rope.cl): normal and NeoX, partial rotary, positions in a device buffer.
#pragma once

#include <cstdint>
#include <string>

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
  float freq_scale = 1.0f;   // linear scaling and YaRN: 1 / rope.scaling.factor (1: none); > 0
  reference::RopeYarn yarn;  // YaRN's blend and magnitude (default: off)
};

// What is wrong with RoPE frequency arguments, or "" when nothing: freq_scale must be finite and
// > 0, freq_factors (null: none) must hold at least n_rot/2 floats, YaRN's values must be finite
// (mscale > 0). Shared by RopeOps and the
// attention op's qkv_finish, which wrap it in their own error types.
std::string rope_frequency_problem(uint32_t n_rot, float freq_scale, cl_mem freq_factors,
                                   const reference::RopeYarn& yarn = {});
// YaRN's values as the kernels' float4 argument (ext_factor, corr_low, corr_high, mscale).
cl_float4 rope_yarn_arg(const reference::RopeYarn& yarn);

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class RopeOps {
 public:
  explicit RopeOps(const Device& device);

  // Rotates x[token][head][head_dim] (from element offset x_off) in place; pos holds one int32
  // position per token from pos_off. freq_factors (optional): n_rot/2 floats dividing each pair's
  // angle (Llama 3's rope_freqs.weight), as reference::rope. Throws std::invalid_argument on a bad
  // shape, a freq_scale that is not finite and > 0, or a freq_factors buffer under n_rot/2 floats.
  void rope(cl_mem x, uint32_t x_off, cl_mem pos, uint32_t pos_off, const RopeShape& shape,
            cl_mem freq_factors = nullptr, const Events& ev = {});

 private:
  const Device* device_;
  ClKernel rope_;
};

}  // namespace tessera::ops
