// Device softmax launches and their portability-matrix cases.
#include "host/ops/device/softmax.h"

#include "host/ops/device/matrix.h"
#include "host/ops/reference/activation.h"

namespace tessera::ops {

SoftmaxOps::SoftmaxOps(const Device& device)
    : device_(&device), softmax_(device.kernel("softmax", "softmax_rows_f32")) {}

void SoftmaxOps::softmax_rows(cl_mem x, uint32_t x_off, cl_mem out, uint32_t out_off, uint32_t rows,
                              uint32_t n, const Events& ev) {
  if (rows == 0 || n == 0) return;
  cl_kernel k = softmax_.get();
  const size_t local = row_group_size(*device_, k, n);
  set_local_arg(*device_, k, 5, local * sizeof(float));
  launch_in_pieces(rows, rows_per_launch(*device_, local), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, x, cl_uint(x_off + first * n), out,
                              cl_uint(out_off + first * n), n);
                     const size_t global = count * local;
                     enqueue(*device_, k, 1, &global, &local, piece);
                   });
}

namespace {

MatrixCaseResult run_softmax(const Device& device, bool timing, uint32_t rows, uint32_t n) {
  std::vector<float> x = random_floats(size_t(rows) * n, 41 + n, -10, 10);
  std::vector<float> ref = x;
  for (uint32_t r = 0; r < rows; ++r)
    reference::softmax(std::span<float>(ref.data() + size_t(r) * n, n));
  SoftmaxOps ops(device);
  GuardedBuffer dx(device, x), dout(device, x.size() * sizeof(float));
  ops.softmax_rows(dx.mem(), 0, dout.mem(), 0, rows, n);
  MatrixCaseResult r = judge(compare(dout.download<float>(), ref), 1e-5, {dout.check_guard()});
  r.bytes = double(x.size()) * 8;
  r.flops = double(x.size()) * 5;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.softmax_rows(dx.mem(), 0, dout.mem(), 0, rows, n, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_softmax_cases(std::vector<MatrixCase>& out) {
  const std::pair<uint32_t, uint32_t> shapes[] = {
      {1, 32000}, {5, 1000}, {3, 1}, {17, 33}, {2, 151936}};
  for (auto [rows, n] : shapes) {
    out.push_back({"softmax", "f32", std::to_string(rows) + "x" + std::to_string(n),
                   [=](const Device& d, bool t) { return run_softmax(d, t, rows, n); }});
  }
}

}  // namespace tessera::ops
