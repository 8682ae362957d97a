// Device activations (cl_kernels/act.cl): SwiGLU (plain and gpt-oss's clamped form), the sigmoid
// gate and GELU (tanh form) over strided [rows][cols].
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

// A [rows][cols] f32 matrix inside a buffer: element (r, c) at offset + r * stride + c.
struct Strided {
  cl_mem mem = nullptr;
  uint32_t offset = 0;
  uint32_t stride = 0;  // floats between rows; >= cols
};

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class ActivationOps {
 public:
  explicit ActivationOps(const Device& device);

  // out = silu(gate) * up element-wise (gate and up may be the halves of one fused projection
  // output); out may alias gate or up. Throws std::invalid_argument when a stride is below cols.
  void swiglu(const Strided& gate, const Strided& up, const Strided& out, uint32_t rows,
              uint32_t cols, const Events& ev = {});
  // gpt-oss's clamped SwiGLU (reference::swiglu_oai): out = g sigmoid(alpha g) (u + 1) with
  // g = min(gate, limit), u = clamp(up, -limit, limit). Same layout rules as swiglu.
  void swiglu_oai(const Strided& gate, const Strided& up, const Strided& out, uint32_t rows,
                  uint32_t cols, float alpha, float limit, const Events& ev = {});
  // out = x * sigmoid(gate) (reference::sigmoid_mul): Qwen3-Next's gated attention, with rows =
  // tokens * heads, x the attention output (stride head_dim) and gate the second half of each
  // head's q projection (offset head_dim, stride 2 * head_dim). out may alias x or gate.
  void sigmoid_mul(const Strided& x, const Strided& gate, const Strided& out, uint32_t rows,
                   uint32_t cols, const Events& ev = {});
  // out = gelu(x), tanh approximation (ggml_gelu); out may alias x.
  void gelu(const Strided& x, const Strided& out, uint32_t rows, uint32_t cols,
            const Events& ev = {});

 private:
  const Device* device_;
  ClKernel swiglu_, swiglu_oai_, sigmoid_mul_, gelu_;
};

}  // namespace tessera::ops
