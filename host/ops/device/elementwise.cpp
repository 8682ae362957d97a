// Device add / scaled add / argmax launches and their portability-matrix cases.
#include "host/ops/device/elementwise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>

#include "host/ops/device/matrix.h"
#include "host/ops/reference/elementwise.h"

namespace tessera::ops {

ElementwiseOps::ElementwiseOps(const Device& device)
    : device_(&device),
      add_(device.kernel("elementwise", "add_f32")),
      scale_(device.kernel("elementwise", "scale_f32")),
      scaled_add_(device.kernel("elementwise", "scaled_add_f32")),
      row_bias_(device.kernel("elementwise", "add_row_bias_f32")),
      pair_bias_(device.kernel("elementwise", "add_pair_bias_f32")),
      argmax_(device.kernel("elementwise", "argmax_rows_f32")) {}

void ElementwiseOps::add(cl_mem a, uint32_t a_off, cl_mem b, uint32_t b_off, cl_mem out,
                         uint32_t out_off, uint64_t n, const Events& ev) {
  if (n == 0) return;
  cl_kernel k = add_.get();
  // Split where one launch cannot cover n within the device's global and loop limits.
  launch_in_pieces(n, elementwise_max_elements(*device_), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     if (first + std::max({a_off, b_off, out_off}) > UINT32_MAX)
                       throw LaunchUnsupported("add: element offset past 2^32 in a split launch");
                     set_args(*device_, k, a, cl_uint(a_off + first), b, cl_uint(b_off + first),
                              out, cl_uint(out_off + first), cl_ulong(count));
                     size_t local = 0;
                     const size_t global = elementwise_global_size(*device_, count, &local);
                     enqueue(*device_, k, 1, &global, &local, piece);
                   });
}

void ElementwiseOps::scale(cl_mem x, uint32_t x_off, uint64_t n, float s, const Events& ev) {
  if (n == 0) return;
  cl_kernel k = scale_.get();
  launch_in_pieces(n, elementwise_max_elements(*device_), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     if (first + x_off > UINT32_MAX)
                       throw LaunchUnsupported("scale: element offset past 2^32 in a split launch");
                     set_args(*device_, k, x, cl_uint(x_off + first), s, cl_ulong(count));
                     size_t local = 0;
                     const size_t global = elementwise_global_size(*device_, count, &local);
                     enqueue(*device_, k, 1, &global, &local, piece);
                   });
}

void ElementwiseOps::scaled_add(cl_mem y, uint32_t y_off, cl_mem x, uint32_t x_off, cl_mem w,
                                uint32_t w_off, uint32_t w_stride, uint32_t rows, uint32_t cols,
                                const Events& ev) {
  if (rows == 0 || cols == 0) return;
  cl_kernel k = scaled_add_.get();
  size_t global[2], local[2];
  row_elementwise_sizes(*device_, rows, cols, global, local);
  launch_in_pieces(rows, rows_per_launch(*device_, global[0]), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, y, cl_uint(y_off + first * cols), x,
                              cl_uint(x_off + first * cols), w, cl_uint(w_off + first * w_stride),
                              w_stride, cols);
                     global[1] = count;
                     enqueue(*device_, k, 2, global, local, piece);
                   });
}

void ElementwiseOps::add_row_bias(cl_mem y, uint32_t y_off, uint32_t ld, cl_mem b, uint32_t b_off,
                                  uint32_t rows, uint32_t cols, const Events& ev) {
  if (rows == 0 || cols == 0) return;
  cl_kernel k = row_bias_.get();
  size_t global[2], local[2];
  row_elementwise_sizes(*device_, rows, cols, global, local);
  launch_in_pieces(rows, rows_per_launch(*device_, global[0]), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, y, cl_uint(y_off + first * ld), ld, b, b_off, cols);
                     global[1] = count;
                     enqueue(*device_, k, 2, global, local, piece);
                   });
}

void ElementwiseOps::add_pair_bias(cl_mem y, uint32_t y_off, uint32_t ld, cl_mem ids,
                                   uint32_t ids_off, cl_mem b, uint32_t rows, uint32_t cols,
                                   const Events& ev) {
  if (rows == 0 || cols == 0) return;
  if (ld < cols)
    throw std::invalid_argument("add_pair_bias: row stride " + std::to_string(ld) +
                                " is below the " + std::to_string(cols) + " columns");
  cl_kernel k = pair_bias_.get();
  size_t global[2], local[2];
  row_elementwise_sizes(*device_, rows, cols, global, local);
  launch_in_pieces(rows, rows_per_launch(*device_, global[0]), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, y, cl_uint(y_off + first * ld), ld, ids,
                              cl_uint(ids_off + first), b, cols);
                     global[1] = count;
                     enqueue(*device_, k, 2, global, local, piece);
                   });
}

void ElementwiseOps::argmax_rows(cl_mem x, uint32_t x_off, uint32_t rows, uint32_t n, cl_mem ids,
                                 uint32_t ids_off, const Events& ev) {
  if (rows == 0 || n == 0) return;
  cl_kernel k = argmax_.get();
  const size_t local = row_group_size(*device_, k, n);
  set_local_arg(*device_, k, 5, local * sizeof(float));
  set_local_arg(*device_, k, 6, local * sizeof(cl_uint));
  launch_in_pieces(rows, rows_per_launch(*device_, local), ev,
                   [&](size_t first, size_t count, const Events& piece) {
                     set_args(*device_, k, x, cl_uint(x_off + first * n), n, ids,
                              cl_uint(ids_off + first));
                     const size_t global = count * local;
                     enqueue(*device_, k, 1, &global, &local, piece);
                   });
}

namespace {

MatrixCaseResult run_add(const Device& device, bool timing, uint32_t n) {
  const auto a = random_floats(n, 61 + n), b = random_floats(n, 62 + n);
  std::vector<float> ref(n);
  reference::add(a, b, ref);
  ElementwiseOps ops(device);
  GuardedBuffer da(device, a), db(device, b), dout(device, size_t(n) * 4);
  ops.add(da.mem(), 0, db.mem(), 0, dout.mem(), 0, n);
  MatrixCaseResult r = judge(compare(dout.download<float>(), ref), 1e-6, {dout.check_guard()});
  r.bytes = double(n) * 12;
  r.flops = n;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.add(da.mem(), 0, db.mem(), 0, dout.mem(), 0, n, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// x *= s from an offset (the floats before it stay as they were).
MatrixCaseResult run_scale(const Device& device, bool timing, uint32_t n, uint32_t off, float s) {
  const auto x = random_floats(size_t(n) + off, 60 + n);
  std::vector<float> ref = x;
  reference::scale(std::span<float>(ref).subspan(off), s);
  ElementwiseOps ops(device);
  GuardedBuffer dx(device, x);
  ops.scale(dx.mem(), off, n, s);
  MatrixCaseResult r = judge(compare(dx.download<float>(), ref), 1e-6, {dx.check_guard()});
  r.bytes = double(n) * 8;
  r.flops = n;
  if (timing) {  // scales again on every launch: values drift, the time does not
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.scale(dx.mem(), off, n, 1.0f, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// Weights as a [rows][k] routing matrix; the case accumulates slot `slot`.
MatrixCaseResult run_scaled_add(const Device& device, bool timing, uint32_t rows, uint32_t cols,
                                uint32_t k, uint32_t slot) {
  const size_t n = size_t(rows) * cols;
  const auto y = random_floats(n, 63 + cols), x = random_floats(n, 64 + cols);
  const auto w = random_floats(size_t(rows) * k, 65 + k, 0, 1);
  std::vector<float> w_slot(rows);
  for (uint32_t r = 0; r < rows; ++r) w_slot[r] = w[size_t(r) * k + slot];
  std::vector<float> ref = y;
  reference::scaled_add(ref, x, w_slot, cols);
  ElementwiseOps ops(device);
  GuardedBuffer dy(device, y), dx(device, x), dw(device, w);
  ops.scaled_add(dy.mem(), 0, dx.mem(), 0, dw.mem(), slot, k, rows, cols);
  MatrixCaseResult r = judge(compare(dy.download<float>(), ref), 1e-6, {dy.check_guard()});
  r.bytes = double(n) * 12;
  r.flops = double(n) * 2;
  if (timing) {  // accumulates again on every launch: values drift, the time does not
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.scaled_add(dy.mem(), 0, dx.mem(), 0, dw.mem(), slot, k, rows, cols, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// A bias on rows `ld` apart (ld > cols: only the first cols of each row change).
MatrixCaseResult run_row_bias(const Device& device, bool timing, uint32_t rows, uint32_t cols,
                              uint32_t ld) {
  const auto y = random_floats(size_t(rows) * ld, 68 + cols), b = random_floats(cols, 69 + cols);
  std::vector<float> ref = y;
  reference::add_row_bias(ref, b, ld);
  ElementwiseOps ops(device);
  GuardedBuffer dy(device, y), db(device, b);
  ops.add_row_bias(dy.mem(), 0, ld, db.mem(), 0, rows, cols);
  MatrixCaseResult r = judge(compare(dy.download<float>(), ref), 1e-6, {dy.check_guard()});
  r.bytes = double(rows) * cols * 8;
  r.flops = double(rows) * cols;
  if (timing) {  // adds again on every launch: values drift, the time does not
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.add_row_bias(dy.mem(), 0, ld, db.mem(), 0, rows, cols, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// Pair rows `ld` apart, each with an expert id in [0, n_bias) (repeats and gaps included).
MatrixCaseResult run_pair_bias(const Device& device, bool timing, uint32_t rows, uint32_t cols,
                               uint32_t ld, uint32_t n_bias) {
  const auto y = random_floats(size_t(rows) * ld, 70 + cols),
             b = random_floats(size_t(n_bias) * cols, 71 + cols);
  std::vector<int32_t> ids(rows);
  std::mt19937 rng(72 + rows);
  for (auto& id : ids) id = int32_t(rng() % n_bias);
  std::vector<float> ref = y;
  reference::add_pair_bias(ref, ids, b, cols, ld);
  ElementwiseOps ops(device);
  GuardedBuffer dy(device, y), dids(device, ids), db(device, b);
  ops.add_pair_bias(dy.mem(), 0, ld, dids.mem(), 0, db.mem(), rows, cols);
  MatrixCaseResult r = judge(compare(dy.download<float>(), ref), 1e-6,
                             {dy.check_guard(), dids.check_guard(), db.check_guard()});
  r.bytes = double(rows) * cols * 12;
  r.flops = double(rows) * cols;
  if (timing) {  // adds again on every launch: values drift, the time does not
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.add_pair_bias(dy.mem(), 0, ld, dids.mem(), 0, db.mem(), rows, cols, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// ties: the row maximum appears several times (and NaNs are sprinkled in), so the tie rule shows.
MatrixCaseResult run_argmax(const Device& device, bool timing, uint32_t rows, uint32_t n,
                            bool ties) {
  std::vector<float> x = random_floats(size_t(rows) * n, 66 + n, -20, 20);
  if (ties) {
    std::mt19937 rng(67);
    for (uint32_t r = 0; r < rows; ++r) {
      float* row = x.data() + size_t(r) * n;
      for (int j = 0; j < 3; ++j) row[rng() % n] = 25.0f;
      row[rng() % n] = NAN;
    }
  }
  const std::vector<int32_t> ref = reference::argmax_rows(x, n);
  ElementwiseOps ops(device);
  GuardedBuffer dx(device, x), dids(device, size_t(rows) * 4);
  ops.argmax_rows(dx.mem(), 0, rows, n, dids.mem(), 0);
  MatrixCaseResult r;
  r.status = "pass";
  for (const std::string& g : {dids.check_guard()}) {
    if (!g.empty()) {
      r.status = "fail";
      r.note = g;
    }
  }
  if (const size_t bad = count_mismatches(dids.download<int32_t>(), ref);
      bad > 0 && r.status == "pass") {
    r.status = "fail";
    r.note = std::to_string(bad) + " of " + std::to_string(rows) + " row argmaxes differ";
  }
  r.bytes = double(rows) * n * 4;
  r.flops = double(rows) * n;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      ops.argmax_rows(dx.mem(), 0, rows, n, dids.mem(), 0, {{}, ev.out()});
      return ev;
    });
  }
  return r;
}

}  // namespace

void register_elementwise_cases(std::vector<MatrixCase>& out) {
  for (uint32_t n : {4096u, 1u, 7007u, (1u << 22) + 3}) {
    out.push_back({"add", "f32", std::to_string(n),
                   [=](const Device& d, bool t) { return run_add(d, t, n); }});
  }
  // Granite's multipliers: a decode row, a prefill chunk from an offset, one float.
  struct Scale {
    uint32_t n, off;
    float s;
  };
  for (Scale c : {Scale{1536, 0, 12.0f}, Scale{7 * 1003, 5, 0.22f}, Scale{1, 0, -0.5f},
                  Scale{(1u << 20) + 3, 1, 0.015625f}}) {
    out.push_back({"scale", "f32", std::to_string(c.n) + "/off" + std::to_string(c.off),
                   [=](const Device& d, bool t) { return run_scale(d, t, c.n, c.off, c.s); }});
  }
  struct Scaled {
    uint32_t rows, cols, k, slot;
  };
  for (Scaled s :
       {Scaled{1, 4096, 8, 3}, Scaled{7, 1001, 2, 1}, Scaled{1, 1, 1, 0}, Scaled{64, 2048, 8, 7}}) {
    out.push_back(
        {"scaled_add", "f32",
         std::to_string(s.rows) + "x" + std::to_string(s.cols) + "/k" + std::to_string(s.k),
         [=](const Device& d, bool t) {
           return run_scaled_add(d, t, s.rows, s.cols, s.k, s.slot);
         }});
  }
  struct Bias {
    uint32_t rows, cols, ld;
  };
  for (Bias b : {Bias{1, 1536, 1536}, Bias{7, 1000, 1003}, Bias{64, 2560, 2560}, Bias{3, 1, 5}}) {
    out.push_back(
        {"add_row_bias", "f32",
         std::to_string(b.rows) + "x" + std::to_string(b.cols) + "/ld" + std::to_string(b.ld),
         [=](const Device& d, bool t) { return run_row_bias(d, t, b.rows, b.cols, b.ld); }});
  }
  struct PairBias {
    uint32_t rows, cols, ld, n_bias;
  };
  // Decode (4 pairs of 32 experts, gate|up rows), prefill-sized, a pair row wider than the bias.
  for (PairBias b : {PairBias{4, 5760, 5760, 32}, PairBias{44, 2880, 2880, 32},
                     PairBias{7, 100, 203, 4}, PairBias{1, 1, 1, 1}}) {
    out.push_back({"add_pair_bias", "f32",
                   std::to_string(b.rows) + "x" + std::to_string(b.cols) + "/ld" +
                       std::to_string(b.ld) + "/e" + std::to_string(b.n_bias),
                   [=](const Device& d, bool t) {
                     return run_pair_bias(d, t, b.rows, b.cols, b.ld, b.n_bias);
                   }});
  }
  struct Arg {
    uint32_t rows, n;
    bool ties;
  };
  for (Arg a : {Arg{1, 32000, false}, Arg{5, 151, false}, Arg{3, 1, false}, Arg{4, 1000, true},
                Arg{2, 151936, true}}) {
    std::string shape = std::to_string(a.rows) + "x" + std::to_string(a.n);
    if (a.ties) shape += "/ties";
    out.push_back({"argmax", "f32", shape,
                   [=](const Device& d, bool t) { return run_argmax(d, t, a.rows, a.n, a.ties); }});
  }
}

}  // namespace tessera::ops
