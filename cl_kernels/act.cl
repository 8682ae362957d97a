// Activations over [rows][cols] matrices with row strides (so gate and up may be the two halves of
// one fused projection output): SwiGLU out = silu(gate) * up, GELU (tanh approximation, as ggml).
// out may alias an input. Element-wise: see rows.clh FOR_ALL for the per-device pattern.
#include "common.clh"
#include "rows.clh"

__kernel void swiglu_f32(__global const float* gate, uint g_off, uint g_stride,
                         __global const float* up, uint u_off, uint u_stride,
                         __global float* out, uint o_off, uint o_stride, uint rows, uint cols) {
  FOR_ALL(e, (ulong)rows * cols) {
    const ulong r = e / cols;
    const ulong c = e - r * cols;
    const float g = gate[g_off + r * g_stride + c];
    const float u = up[u_off + r * u_stride + c];
    out[o_off + r * o_stride + c] = g / (1.0f + exp(-g)) * u;
  }
}

// gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
__kernel void gelu_f32(__global const float* x, uint x_off, uint x_stride, __global float* out,
                       uint o_off, uint o_stride, uint rows, uint cols) {
  FOR_ALL(e, (ulong)rows * cols) {
    const ulong r = e / cols;
    const ulong c = e - r * cols;
    const float v = x[x_off + r * x_stride + c];
    const float inner = 0.7978845608028654f * v * (1.0f + 0.044715f * v * v);
    out[o_off + r * o_stride + c] = 0.5f * v * (1.0f + tanh(inner));
  }
}
