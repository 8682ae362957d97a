// Launch plumbing shared by the device ops: wait lists / completion events, kernel arguments and
// work sizes. Every op family uses it so launches look the same everywhere; while a step program
// records a device (step_program.h), arguments and launches on it go to the program instead.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "devices/cl_error.h"
#include "devices/device.h"
#include "host/ops/device/step_program.h"

namespace tessera::ops {

// What a launch waits for and where it reports completion. `done` (optional) receives a new event
// the caller owns (wrap it in ClEvent). Launches never block: the queue is in order.
struct Events {
  std::span<const cl_event> wait = {};
  cl_event* done = nullptr;
};

// Sets argument `index` of `kernel`; throws ClError naming the argument position and device.
template <typename T>
void set_arg(const Device& device, cl_kernel kernel, cl_uint index, const T& value) {
  // T is the argument's own type (cl_mem, cl_uint, ...): its size is what OpenCL expects.
  if (StepProgram* p = recording_for(device)) {
    p->stage_arg(device, kernel, index, &value, sizeof(T));
    return;
  }
  // NOLINTNEXTLINE(bugprone-sizeof-expression)
  cl_int err = clSetKernelArg(kernel, index, sizeof(T), &value);
  if (err != CL_SUCCESS)
    throw ClError("clSetKernelArg(#" + std::to_string(index) + ")", err, device.info().label());
}

// Sets all arguments in order: set_args(device, kernel, buf, offset, n, ...).
template <typename... A>
void set_args(const Device& device, cl_kernel kernel, const A&... args) {
  cl_uint i = 0;
  (set_arg(device, kernel, i++, args), ...);
}

// Local-memory argument of `bytes`.
inline void set_local_arg(const Device& device, cl_kernel kernel, cl_uint index, size_t bytes) {
  if (StepProgram* p = recording_for(device)) {
    p->stage_arg(device, kernel, index, nullptr, bytes);
    return;
  }
  cl_int err = clSetKernelArg(kernel, index, bytes, nullptr);
  if (err != CL_SUCCESS)
    throw ClError("clSetKernelArg(#" + std::to_string(index) + ", local)", err,
                  device.info().label());
}

// Enqueues an NDRange of `dims` dimensions (local may be null: the driver picks).
inline void enqueue(const Device& device, cl_kernel kernel, cl_uint dims, const size_t* global,
                    const size_t* local, const Events& ev) {
  if (StepProgram* p = recording_for(device)) {
    p->add_launch(device, kernel, dims, global, local, ev.wait, ev.done);
    return;
  }
  cl_int err = clEnqueueNDRangeKernel(device.queue(), kernel, dims, nullptr, global, local,
                                      cl_uint(ev.wait.size()),
                                      ev.wait.empty() ? nullptr : ev.wait.data(), ev.done);
  if (err != CL_SUCCESS) throw ClError("clEnqueueNDRangeKernel", err, device.info().label());
}

inline size_t round_up(size_t n, size_t m) {
  return (n + m - 1) / m * m;
}

// Largest power of two <= n (n >= 1).
inline size_t floor_pow2(size_t n) {
  size_t p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

// Work-group size of a row kernel (one work-group per row, power of two for the tree reductions):
// on CPUs (PoCL runs a work-group on one core) short rows get one work item streaming the row, long
// rows 8 contiguous chunks (shorter dependency chains; it also keeps the reductions exercised on
// CPU-only CI); on GPUs up to `cap` work items share a row, no more than the row has elements.
inline size_t row_group_size(const Device& device, cl_kernel kernel, size_t row_len,
                             size_t cap = 256) {
  if (device.info().type == DeviceType::kCpu) return row_len >= 4096 ? 8 : 1;
  size_t kernel_max = 0;
  clGetKernelWorkGroupInfo(kernel, device.handle(), CL_KERNEL_WORK_GROUP_SIZE, sizeof(kernel_max),
                           &kernel_max, nullptr);
  size_t limit = std::min<size_t>(cap, device.info().max_work_group_size);
  if (kernel_max > 0) limit = std::min(limit, kernel_max);
  size_t want = 1;
  while (want < row_len && want < limit) want *= 2;
  return floor_pow2(std::min(want, limit));
}

// Global size of an element-wise kernel over n elements: CPUs get a few contiguous chunks per
// compute unit (the kernels compute each item's chunk), GPUs one item per element up to a cap with
// a grid-stride loop. `local` receives the work-group size to pass.
inline size_t elementwise_global_size(const Device& device, size_t n, size_t* local) {
  if (device.info().type == DeviceType::kCpu) {
    *local = 1;
    const size_t items = std::max<size_t>(1, device.info().compute_units) * 8;
    return std::max<size_t>(1, std::min(items, (n + 255) / 256));
  }
  *local = 256;
  return std::min(round_up(std::max<size_t>(n, 1), 256), size_t(256) * 65536);
}

// NDRange (column items, rows) of a per-row element-wise kernel (FOR_COLS in rows.clh): about the
// same total items as elementwise_global_size, split over the rows. `local` receives dimension 0's
// work-group size (dimension 1's is 1).
inline void row_elementwise_sizes(const Device& device, size_t rows, size_t cols, size_t global[2],
                                  size_t local[2]) {
  local[1] = 1;
  global[1] = rows;
  if (device.info().type == DeviceType::kCpu) {
    local[0] = 1;
    const size_t items = std::max<size_t>(1, device.info().compute_units) * 8;
    const size_t per_row = std::max<size_t>(1, (items + rows - 1) / rows);
    global[0] = std::max<size_t>(1, std::min(per_row, (cols + 255) / 256));
    return;
  }
  local[0] = std::min<size_t>(256, floor_pow2(std::max<size_t>(cols, 32)));
  global[0] = std::min(round_up(cols, local[0]), local[0] * 64);
}

}  // namespace tessera::ops
