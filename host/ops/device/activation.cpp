// Device SwiGLU / GELU launches and their portability-matrix cases.
#include "host/ops/device/activation.h"

#include <algorithm>
#include <stdexcept>
#include <tuple>

#include "host/ops/device/matrix.h"
#include "host/ops/reference/activation.h"
#include "host/ops/reference/gelu.h"

namespace tessera::ops {
namespace {

void check_strides(const char* op, uint32_t cols, std::initializer_list<uint32_t> strides) {
  for (uint32_t s : strides) {
    if (s < cols)
      throw std::invalid_argument(std::string(op) + ": row stride " + std::to_string(s) +
                                  " is below the " + std::to_string(cols) + " columns");
  }
}

}  // namespace

ActivationOps::ActivationOps(const Device& device)
    : device_(&device),
      swiglu_(device.kernel("act", "swiglu_f32")),
      swiglu_oai_(device.kernel("act", "swiglu_oai_f32")),
      sigmoid_mul_(device.kernel("act", "sigmoid_mul_f32")),
      gelu_(device.kernel("act", "gelu_f32")) {}

void ActivationOps::swiglu(const Strided& gate, const Strided& up, const Strided& out,
                           uint32_t rows, uint32_t cols, const Events& ev) {
  check_strides("swiglu", cols, {gate.stride, up.stride, out.stride});
  if (rows == 0 || cols == 0) return;
  cl_kernel k = swiglu_.get();
  size_t global[2], local[2];
  row_elementwise_sizes(*device_, rows, cols, global, local);
  launch_in_pieces(rows, rows_per_launch(*device_, global[0]), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, gate.mem, cl_uint(gate.offset + first * gate.stride),
                              gate.stride, up.mem, cl_uint(up.offset + first * up.stride),
                              up.stride, out.mem, cl_uint(out.offset + first * out.stride),
                              out.stride, cl_uint(count), cols);
                     global[1] = count;
                     enqueue(*device_, k, 2, global, local, piece);
                   });
}

void ActivationOps::swiglu_oai(const Strided& gate, const Strided& up, const Strided& out,
                               uint32_t rows, uint32_t cols, float alpha, float limit,
                               const Events& ev) {
  check_strides("swiglu_oai", cols, {gate.stride, up.stride, out.stride});
  if (rows == 0 || cols == 0) return;
  cl_kernel k = swiglu_oai_.get();
  size_t global[2], local[2];
  row_elementwise_sizes(*device_, rows, cols, global, local);
  launch_in_pieces(rows, rows_per_launch(*device_, global[0]), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, gate.mem, cl_uint(gate.offset + first * gate.stride),
                              gate.stride, up.mem, cl_uint(up.offset + first * up.stride),
                              up.stride, out.mem, cl_uint(out.offset + first * out.stride),
                              out.stride, cl_uint(count), cols, alpha, limit);
                     global[1] = count;
                     enqueue(*device_, k, 2, global, local, piece);
                   });
}

void ActivationOps::sigmoid_mul(const Strided& x, const Strided& gate, const Strided& out,
                                uint32_t rows, uint32_t cols, const Events& ev) {
  check_strides("sigmoid_mul", cols, {x.stride, gate.stride, out.stride});
  if (rows == 0 || cols == 0) return;
  cl_kernel k = sigmoid_mul_.get();
  size_t global[2], local[2];
  row_elementwise_sizes(*device_, rows, cols, global, local);
  launch_in_pieces(rows, rows_per_launch(*device_, global[0]), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, x.mem, cl_uint(x.offset + first * x.stride), x.stride,
                              gate.mem, cl_uint(gate.offset + first * gate.stride), gate.stride,
                              out.mem, cl_uint(out.offset + first * out.stride), out.stride,
                              cl_uint(count), cols);
                     global[1] = count;
                     enqueue(*device_, k, 2, global, local, piece);
                   });
}

void ActivationOps::gelu(const Strided& x, const Strided& out, uint32_t rows, uint32_t cols,
                         const Events& ev) {
  check_strides("gelu", cols, {x.stride, out.stride});
  if (rows == 0 || cols == 0) return;
  cl_kernel k = gelu_.get();
  size_t global[2], local[2];
  row_elementwise_sizes(*device_, rows, cols, global, local);
  launch_in_pieces(rows, rows_per_launch(*device_, global[0]), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, x.mem, cl_uint(x.offset + first * x.stride), x.stride,
                              out.mem, cl_uint(out.offset + first * out.stride), out.stride,
                              cl_uint(count), cols);
                     global[1] = count;
                     enqueue(*device_, k, 2, global, local, piece);
                   });
}

namespace {

// fused: gate and up are the two halves of one [rows][2*cols] buffer, as a fused gate_up projection
// writes them; otherwise separate packed buffers.
// oai: gpt-oss's clamped form (alpha 1.702, limit 7), with inputs reaching past the limit.
MatrixCaseResult run_swiglu(const Device& device, bool timing, uint32_t rows, uint32_t cols,
                            bool fused, bool oai = false) {
  const size_t n = size_t(rows) * cols;
  const float g_max = oai ? 12.0f : 6.0f, u_max = oai ? 20.0f : 2.0f;
  std::vector<float> gate = random_floats(n, 31 + cols, -g_max, g_max),
                     up = random_floats(n, 32 + cols, -u_max, u_max);
  std::vector<float> ref(n);
  constexpr float kAlpha = 1.702f, kLimit = 7.0f;
  if (oai)
    reference::swiglu_oai(gate, up, ref, kAlpha, kLimit);
  else
    reference::swiglu(gate, up, ref);
  ActivationOps ops(device);
  std::vector<float> packed;
  if (fused) {
    packed.resize(2 * n);
    for (uint32_t r = 0; r < rows; ++r) {
      std::copy_n(gate.begin() + size_t(r) * cols, cols, packed.begin() + size_t(r) * 2 * cols);
      std::copy_n(up.begin() + size_t(r) * cols, cols,
                  packed.begin() + size_t(r) * 2 * cols + cols);
    }
  }
  GuardedBuffer dg(device, fused ? packed : gate), du(device, up), dout(device, n * sizeof(float));
  const Strided g{dg.mem(), 0, fused ? 2 * cols : cols};
  const Strided u = fused ? Strided{dg.mem(), cols, 2 * cols} : Strided{du.mem(), 0, cols};
  const Strided o{dout.mem(), 0, cols};
  auto run = [&](const Events& ev) {
    if (oai)
      ops.swiglu_oai(g, u, o, rows, cols, kAlpha, kLimit, ev);
    else
      ops.swiglu(g, u, o, rows, cols, ev);
  };
  run({});
  MatrixCaseResult r = judge(compare(dout.download<float>(), ref), 1e-5, {dout.check_guard()});
  r.bytes = double(n) * 12;
  r.flops = double(n) * 6;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      run({{}, ev.out()});
      return ev;
    });
  }
  return r;
}

MatrixCaseResult run_gelu(const Device& device, bool timing, uint32_t rows, uint32_t cols) {
  const size_t n = size_t(rows) * cols;
  std::vector<float> x = random_floats(n, 33 + cols, -6, 6);
  std::vector<float> ref(n);
  reference::gelu(x, ref);
  ActivationOps ops(device);
  GuardedBuffer dx(device, x), dout(device, n * sizeof(float));
  const Strided in{dx.mem(), 0, cols}, o{dout.mem(), 0, cols};
  ops.gelu(in, o, rows, cols);
  // 1 + tanh(u) cancels for very negative x in float (as in ggml): judge against the input scale.
  MatrixCaseResult r = judge(compare(dout.download<float>(), ref, 1.0), 1e-5, {dout.check_guard()});
  r.bytes = double(n) * 8;
  r.flops = double(n) * 10;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.gelu(in, o, rows, cols, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// Qwen3-Next's layout: x packed [rows][cols], the gate the second half of [rows][2 * cols] rows
// (q | gate per head); in place writes the result over x.
MatrixCaseResult run_sigmoid_mul(const Device& device, bool timing, uint32_t rows, uint32_t cols,
                                 bool in_place) {
  const size_t n = size_t(rows) * cols;
  const std::vector<float> x = random_floats(n, 35 + cols, -4, 4),
                           qg = random_floats(2 * n, 36 + cols, -8, 8);
  std::vector<float> gate(n), ref(n);
  for (uint32_t r = 0; r < rows; ++r)
    std::copy_n(qg.begin() + size_t(r) * 2 * cols + cols, cols, gate.begin() + size_t(r) * cols);
  reference::sigmoid_mul(x, gate, ref);
  ActivationOps ops(device);
  GuardedBuffer dx(device, x), dqg(device, qg), dout(device, in_place ? 4 : n * sizeof(float));
  const Strided xs{dx.mem(), 0, cols}, gs{dqg.mem(), cols, 2 * cols};
  const Strided o = in_place ? xs : Strided{dout.mem(), 0, cols};
  ops.sigmoid_mul(xs, gs, o, rows, cols);
  MatrixCaseResult r = judge(compare(in_place ? dx.download<float>() : dout.download<float>(), ref),
                             1e-5, {dx.check_guard(), dout.check_guard()});
  r.bytes = double(n) * 12;
  r.flops = double(n) * 4;
  if (timing && !in_place) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.sigmoid_mul(xs, gs, o, rows, cols, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

std::string rc(uint32_t rows, uint32_t cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

}  // namespace

void register_activation_cases(std::vector<MatrixCase>& out) {
  const std::pair<uint32_t, uint32_t> shapes[] = {
      {1, 14336}, {7, 1001}, {1, 1}, {3, 17}, {2, 1 << 20}};
  for (auto [rows, cols] : shapes) {
    out.push_back({"swiglu", "f32", rc(rows, cols),
                   [=](const Device& d, bool t) { return run_swiglu(d, t, rows, cols, false); }});
  }
  out.push_back({"swiglu", "f32", rc(5, 300) + "/fused",
                 [](const Device& d, bool t) { return run_swiglu(d, t, 5, 300, true); }});
  // gpt-oss's clamped form: gate in [-12, 12), up in [-20, 20), past the limit 7 both ways.
  for (auto [rows, cols] : {std::pair<uint32_t, uint32_t>{7, 1001}, {1, 2880}, {3, 17}}) {
    out.push_back({"swiglu_oai", "f32", rc(rows, cols), [=](const Device& d, bool t) {
                     return run_swiglu(d, t, rows, cols, false, true);
                   }});
  }
  out.push_back({"swiglu_oai", "f32", rc(5, 300) + "/fused",
                 [](const Device& d, bool t) { return run_swiglu(d, t, 5, 300, true, true); }});
  // Qwen3-Next-80B's attention: 16 heads of 256, one decode token and a 7-token chunk; odd sizes.
  for (auto [rows, cols, in_place] : {std::tuple<uint32_t, uint32_t, bool>{16, 256, false},
                                      {112, 256, true},
                                      {3, 17, false},
                                      {1, 1, true}}) {
    out.push_back(
        {"sigmoid_mul", "f32", rc(rows, cols) + (in_place ? "/in_place" : ""),
         [=](const Device& d, bool t) { return run_sigmoid_mul(d, t, rows, cols, in_place); }});
  }
  for (auto [rows, cols] : shapes) {
    out.push_back({"gelu", "f32", rc(rows, cols),
                   [=](const Device& d, bool t) { return run_gelu(d, t, rows, cols); }});
  }
}

}  // namespace tessera::ops
