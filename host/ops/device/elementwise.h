// Device element-wise ops (cl_kernels/elementwise.cl): residual add, scaled accumulate for MoE
// combine, argmax per row for greedy sampling on the device.
#pragma once

#include <cstdint>

#include "devices/device.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class ElementwiseOps {
 public:
  explicit ElementwiseOps(const Device& device);

  // out = a + b over n floats from the element offsets; out may be a or b (residual add).
  void add(cl_mem a, uint32_t a_off, cl_mem b, uint32_t b_off, cl_mem out, uint32_t out_off,
           uint64_t n, const Events& ev = {});

  // x[x_off + i] *= s over n floats (Granite's embedding and residual multipliers).
  void scale(cl_mem x, uint32_t x_off, uint64_t n, float s, const Events& ev = {});

  // y[r][c] += w[w_off + r * w_stride] * x[r][c] for `rows` packed rows of `cols` floats: combines
  // expert outputs with their routing weights (slot j of [token][k] weights: w_off = j, w_stride =
  // k).
  void scaled_add(cl_mem y, uint32_t y_off, cl_mem x, uint32_t x_off, cl_mem w, uint32_t w_off,
                  uint32_t w_stride, uint32_t rows, uint32_t cols, const Events& ev = {});

  // y[y_off + r * ld + c] += b[b_off + c] for r < rows, c < cols (a bias on every row).
  void add_row_bias(cl_mem y, uint32_t y_off, uint32_t ld, cl_mem b, uint32_t b_off, uint32_t rows,
                    uint32_t cols, const Events& ev = {});
  // y[y_off + r * ld + c] += b[ids[ids_off + r] * cols + c] for r < rows, c < cols: a per-expert
  // bias on (token, expert) pair rows (gpt-oss's expert biases); ids are int32 rows of b, which the
  // caller keeps in range (the router's choice).
  void add_pair_bias(cl_mem y, uint32_t y_off, uint32_t ld, cl_mem ids, uint32_t ids_off, cl_mem b,
                     uint32_t rows, uint32_t cols, const Events& ev = {});
  // ids[r] (int32, from ids_off) = index of the largest of row r's n floats; ties to the lowest
  // index, NaNs skipped (a row without a number gives 0).
  void argmax_rows(cl_mem x, uint32_t x_off, uint32_t rows, uint32_t n, cl_mem ids,
                   uint32_t ids_off, const Events& ev = {});

 private:
  const Device* device_;
  ClKernel add_, scale_, scaled_add_, row_bias_, pair_bias_, argmax_;
};

}  // namespace tessera::ops
