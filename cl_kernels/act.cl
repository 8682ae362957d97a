// Activations over [rows][cols] matrices with row strides (so gate and up may be the two halves of
// one fused projection output): SwiGLU out = silu(gate) * up, gpt-oss's clamped SwiGLU, the sigmoid
// gate out = x * sigmoid(gate), GELU (tanh approximation, as ggml).
// out may alias an input. NDRange (column items, rows): no index division per element; see rows.clh
// FOR_COLS for the per-device pattern.
#include "common.clh"
#include "rows.clh"

__kernel void swiglu_f32(__global const float* gate, uint g_off, uint g_stride,
                         __global const float* up, uint u_off, uint u_stride,
                         __global float* out, uint o_off, uint o_stride, uint rows, uint cols) {
  const size_t r = get_global_id(1);
  gate += g_off + r * g_stride;
  up += u_off + r * u_stride;
  out += o_off + r * o_stride;
  FOR_COLS(c, cols) {
    const float g = gate[c];
    out[c] = g / (1.0f + exp(-g)) * up[c];
  }
}

// gpt-oss's clamped SwiGLU (ggml_swiglu_oai): g = min(gate, limit), u = clamp(up, -limit, limit),
// out = g * sigmoid(alpha g) * (u + 1).
__kernel void swiglu_oai_f32(__global const float* gate, uint g_off, uint g_stride,
                             __global const float* up, uint u_off, uint u_stride,
                             __global float* out, uint o_off, uint o_stride, uint rows, uint cols,
                             float alpha, float limit) {
  const size_t r = get_global_id(1);
  gate += g_off + r * g_stride;
  up += u_off + r * u_stride;
  out += o_off + r * o_stride;
  FOR_COLS(c, cols) {
    const float g = fmin(gate[c], limit);
    const float u = clamp(up[c], -limit, limit);
    out[c] = g / (1.0f + exp(alpha * -g)) * (u + 1.0f);
  }
}

// out = x * sigmoid(gate) (Qwen3-Next's gated attention: the gate is the second half of each
// head's q projection, so its rows are strided apart from x's).
__kernel void sigmoid_mul_f32(__global const float* x, uint x_off, uint x_stride,
                              __global const float* gate, uint g_off, uint g_stride,
                              __global float* out, uint o_off, uint o_stride, uint rows, uint cols) {
  const size_t r = get_global_id(1);
  x += x_off + r * x_stride;
  gate += g_off + r * g_stride;
  out += o_off + r * o_stride;
  FOR_COLS(c, cols) out[c] = x[c] / (1.0f + exp(-gate[c]));
}

// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
__kernel void gelu_f32(__global const float* x, uint x_off, uint x_stride, __global float* out,
                       uint o_off, uint o_stride, uint rows, uint cols) {
  const size_t r = get_global_id(1);
  x += x_off + r * x_stride;
  out += o_off + r * o_stride;
  FOR_COLS(c, cols) {
    const float v = x[c];
    const float inner = 0.7978845608028654f * v * (1.0f + 0.044715f * v * v);
    out[c] = 0.5f * v * (1.0f + tanh(inner));
  }
}
