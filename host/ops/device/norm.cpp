// Device RMSNorm launches and their portability-matrix cases.
#include "host/ops/device/norm.h"

#include "host/ops/device/matrix.h"
#include "host/ops/reference/norm.h"

namespace tessera::ops {

NormOps::NormOps(const Device& device)
    : device_(&device), rms_norm_(device.kernel("norm", "rms_norm_f32")) {}

void NormOps::rms_norm(cl_mem x, uint32_t x_off, cl_mem w, uint32_t w_off, cl_mem out,
                       uint32_t out_off, uint32_t rows, uint32_t n, float eps, const Events& ev) {
  if (rows == 0 || n == 0) return;
  cl_kernel k = rms_norm_.get();
  const size_t local = row_group_size(*device_, k, n);
  set_local_arg(*device_, k, 8, local * sizeof(float));
  launch_in_pieces(rows, rows_per_launch(*device_, local), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, x, cl_uint(x_off + first * n), w, w_off, out,
                              cl_uint(out_off + first * n), n, eps);
                     const size_t global = count * local;
                     enqueue(*device_, k, 1, &global, &local, piece);
                   });
}

namespace {

MatrixCaseResult run_rms_norm(const Device& device, bool timing, uint32_t rows, uint32_t n) {
  const float eps = 1e-6f;
  // Rows of different magnitudes so the per-row scale matters.
  std::vector<float> x = random_floats(size_t(rows) * n, 11 + n);
  for (uint32_t r = 0; r < rows; ++r)
    for (uint32_t i = 0; i < n; ++i) x[size_t(r) * n + i] *= float(1 + r % 5);
  const std::vector<float> w = random_floats(n, 12 + n, 0.5f, 1.5f);
  std::vector<float> ref(x.size());
  reference::rms_norm(x, w, eps, ref);

  NormOps ops(device);
  GuardedBuffer dx(device, x), dw(device, w), dout(device, x.size() * sizeof(float));
  ops.rms_norm(dx.mem(), 0, dw.mem(), 0, dout.mem(), 0, rows, n, eps);
  const auto got = dout.download<float>();
  MatrixCaseResult r = judge(compare(got, ref), 3e-5, {dout.check_guard(), dx.check_guard()});
  r.bytes = double(x.size()) * 8 + double(n) * 4;
  r.flops = double(x.size()) * 4;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.rms_norm(dx.mem(), 0, dw.mem(), 0, dout.mem(), 0, rows, n, eps, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_norm_cases(std::vector<MatrixCase>& out) {
  // rows x n: decode token, odd/non-power-of-two sizes, a tiny row, a long row, per-head rows.
  const std::pair<uint32_t, uint32_t> shapes[] = {{1, 4096},  {5, 1000}, {3, 17},  {1, 1},
                                                  {1, 65537}, {64, 128}, {7, 4097}};
  for (auto [rows, n] : shapes) {
    out.push_back(
        {"rms_norm", "f32", std::to_string(rows) + "x" + std::to_string(n),
         [rows, n](const Device& d, bool timing) { return run_rms_norm(d, timing, rows, n); }});
  }
}

}  // namespace tessera::ops
