// Launch plumbing shared by the device ops: wait lists / completion events, kernel arguments and
// work sizes. Every op family uses it so launches look the same everywhere; while a step program
// records a device (step_program.h), arguments and launches on it go to the program instead.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
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
// The same from argument `first` on.
template <typename... A>
void set_args_from(const Device& device, cl_kernel kernel, cl_uint first, const A&... args) {
  cl_uint i = first;
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

// A launch over a device limit that its op cannot shape around (a fixed work-group size over the
// device's maximum, more work items than it takes): refused before it runs, never run partially.
// The portability matrix reports it as unsupported.
using LaunchUnsupported = DeviceUnsupported;

// Enqueues an NDRange of `dims` dimensions (local may be null: the driver picks). Throws
// LaunchUnsupported when the shape exceeds the device's work-group or global limits.
inline void enqueue(const Device& device, cl_kernel kernel, cl_uint dims, const size_t* global,
                    const size_t* local, const Events& ev) {
  const DeviceInfo& info = device.info();
  size_t group = 1;
  for (cl_uint d = 0; d < dims; ++d) {
    const std::string dim = " in dimension " + std::to_string(d);
    if (global[d] > info.max_global_items)
      throw LaunchUnsupported("unsupported on " + info.label() + ": " + std::to_string(global[d]) +
                              " work items" + dim + ", the device takes " +
                              std::to_string(info.max_global_items));
    if (!local) continue;
    group *= local[d];
    if (d < 3 && info.max_work_item_sizes[d] > 0 && local[d] > info.max_work_item_sizes[d])
      throw LaunchUnsupported("unsupported on " + info.label() + ": work-group size " +
                              std::to_string(local[d]) + dim + ", the device allows " +
                              std::to_string(info.max_work_item_sizes[d]));
  }
  if (group > info.max_work_group_size)
    throw LaunchUnsupported("unsupported on " + info.label() + ": work-group of " +
                            std::to_string(group) + " items, the device allows " +
                            std::to_string(info.max_work_group_size));
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

// Fewest work items over n loop iterations so that none runs more than the device's loop limit.
inline size_t min_items_for_loop(const Device& device, size_t n) {
  const uint64_t limit = device.info().max_loop_iterations;
  return limit == 0 ? 1 : std::max<size_t>(1, (n + limit - 1) / limit);
}

// Tokens one launch of a kernel whose work items walk a run's tokens may take on `device`: every
// `unit` tokens cost an item `loops_per_unit` loop iterations (its loops' iterations summed),
// plus `fixed` once. The device's loop limit counts them (llvmpipe's); no limit: UINT32_MAX.
// A multiple of `unit`; 0 when not even one unit fits.
inline uint32_t tokens_per_launch(const Device& device, uint64_t loops_per_unit, uint32_t unit = 1,
                                  uint64_t fixed = 0) {
  // An eighth of the limit is kept back: loop headers and the compiler's own loops count too.
  const uint64_t limit = device.info().max_loop_iterations;
  if (limit == 0) return UINT32_MAX;
  const uint64_t usable = limit - limit / 8;
  if (usable <= fixed) return 0;
  const uint64_t units = (usable - fixed) / std::max<uint64_t>(1, loops_per_unit);
  return uint32_t(std::min<uint64_t>(units * unit, UINT32_MAX / 2 / unit * unit));
}

// Calls launch(first, count, events) over [0, n) in pieces of at most `per_launch` (the device's
// global limit): the first piece waits for ev.wait, the last one reports ev.done; the queue is in
// order, so the pieces run one after the other.
template <typename F>
void launch_in_pieces(size_t n, size_t per_launch, const Events& ev, F&& launch) {
  per_launch = std::max<size_t>(1, per_launch);
  for (size_t first = 0; first < n; first += per_launch) {
    const size_t count = std::min(per_launch, n - first);
    const bool last = first + count >= n;
    launch(first, count,
           Events{first == 0 ? ev.wait : std::span<const cl_event>{}, last ? ev.done : nullptr});
  }
}

// Work-group size of a row kernel (one work-group per row, power of two for the tree reductions):
// on CPUs (PoCL runs a work-group on one core) short rows get one work item streaming the row, long
// rows 8 contiguous chunks (shorter dependency chains; it also keeps the reductions exercised on
// CPU-only CI); on GPUs up to `cap` work items share a row, no more than the row has elements.
// Within the device's work-group limit, and enough items that no item loops past its loop limit
// (throws LaunchUnsupported when a row needs more than a work-group has).
inline size_t row_group_size(const Device& device, cl_kernel kernel, size_t row_len,
                             size_t cap = 256) {
  size_t kernel_max = 0;
  clGetKernelWorkGroupInfo(kernel, device.handle(), CL_KERNEL_WORK_GROUP_SIZE, sizeof(kernel_max),
                           &kernel_max, nullptr);
  size_t limit = std::min<size_t>(cap, device.info().max_group_items());
  if (kernel_max > 0) limit = std::min(limit, kernel_max);
  limit = floor_pow2(std::max<size_t>(1, limit));
  size_t want = 1;
  if (device.info().type == DeviceType::kCpu) {
    want = row_len >= 4096 ? 8 : 1;
  } else {
    while (want < row_len && want < limit) want *= 2;
  }
  const size_t needed = min_items_for_loop(device, row_len);
  while (want < needed) want *= 2;
  if (want > limit && needed > limit)
    throw LaunchUnsupported("unsupported on " + device.info().label() + ": a row of " +
                            std::to_string(row_len) + " needs " + std::to_string(needed) +
                            " work items (loop limit " +
                            std::to_string(device.info().max_loop_iterations) +
                            "), a work-group has at most " + std::to_string(limit));
  return floor_pow2(std::min(want, limit));
}

// Work-group size along dimension 0 of a kernel whose other dimensions are the batch (tokens,
// heads, sequences) with work-groups of 1 there: the largest divisor of `n` (the items along
// dimension 0, set by the model's shape) within `cap` and the kernel's and device's limits. For
// kernels without local memory or barriers, which take any work-group. The size depends on `n`
// only, never on the batch: a driver-picked one follows the whole global size, and PoCL compiles
// a work-group function for every work-group size it meets (100+ ms on a CPU), so each new batch
// size of a serving engine would stall its step for a compile.
inline size_t fixed_group_size(const Device& device, cl_kernel kernel, size_t n, size_t cap = 256) {
  size_t kernel_max = 0;
  clGetKernelWorkGroupInfo(kernel, device.handle(), CL_KERNEL_WORK_GROUP_SIZE, sizeof(kernel_max),
                           &kernel_max, nullptr);
  size_t limit = std::min<size_t>(cap, device.info().max_group_items());
  if (kernel_max > 0) limit = std::min(limit, kernel_max);
  for (size_t d = std::min(std::max<size_t>(1, limit), std::max<size_t>(1, n)); d > 1; --d)
    if (n % d == 0) return d;
  return 1;
}

// Rows per launch of a kernel with `items_per_row` work items per row, within the global limit.
inline size_t rows_per_launch(const Device& device, size_t items_per_row) {
  return std::max<uint64_t>(1, device.info().max_global_items / std::max<size_t>(1, items_per_row));
}

// Global size of an element-wise kernel over n elements: CPUs get a few contiguous chunks per
// compute unit (the kernels compute each item's chunk), GPUs one item per element up to a cap with
// a grid-stride loop. `local` receives the work-group size to pass. Within the device's global
// limit, and enough items that none loops past the device's loop limit; a launch covers at most
// elementwise_max_elements() elements (callers split larger ones).
inline size_t elementwise_global_size(const Device& device, size_t n, size_t* local) {
  const DeviceInfo& info = device.info();
  size_t global = 0;
  if (info.type == DeviceType::kCpu) {
    *local = 1;
    const size_t items = std::max<size_t>(1, info.compute_units) * 8;
    global = std::max<size_t>(1, std::min(items, (n + 255) / 256));
  } else {
    *local = floor_pow2(std::min<size_t>(256, info.max_group_items()));
    global = std::min(round_up(std::max<size_t>(n, 1), *local), *local * 65536);
  }
  global = std::max(global, round_up(min_items_for_loop(device, n), *local));
  const size_t cap = std::max<size_t>(*local, info.max_global_items / *local * *local);
  return std::min(global, cap);
}

// Most elements one element-wise launch covers within the global and loop limits.
inline size_t elementwise_max_elements(const Device& device) {
  const DeviceInfo& info = device.info();
  const size_t items = std::max<uint64_t>(1, info.max_global_items);
  const uint64_t loop = info.max_loop_iterations;
  return loop == 0 || items > SIZE_MAX / loop ? SIZE_MAX : items * loop;
}

// NDRange (column items, rows) of a per-row element-wise kernel (FOR_COLS in rows.clh): about the
// same total items as elementwise_global_size, split over the rows. `local` receives dimension 0's
// work-group size (dimension 1's is 1). Enough column items that none loops past the device's
// loop limit; callers launch at most rows_per_launch(global[0]) rows at once.
inline void row_elementwise_sizes(const Device& device, size_t rows, size_t cols, size_t global[2],
                                  size_t local[2]) {
  local[1] = 1;
  global[1] = rows;
  if (device.info().type == DeviceType::kCpu) {
    local[0] = 1;
    const size_t items = std::max<size_t>(1, device.info().compute_units) * 8;
    const size_t per_row = std::max<size_t>(1, (items + rows - 1) / rows);
    global[0] = std::max<size_t>(1, std::min(per_row, (cols + 255) / 256));
  } else {
    // One work-group size whatever the row length, so a kernel called with rows of different
    // lengths (biases of 32 and 256 columns) launches with one size (tests/engine/replay_test.cpp).
    local[0] = std::min<size_t>(256, floor_pow2(device.info().max_group_items()));
    global[0] = std::min(round_up(cols, local[0]), local[0] * 64);
  }
  global[0] = std::max(global[0], round_up(min_items_for_loop(device, cols), local[0]));
  const size_t cap =
      std::max<size_t>(local[0], device.info().max_global_items / local[0] * local[0]);
  if (global[0] > cap) {
    if (min_items_for_loop(device, cols) > cap)
      throw LaunchUnsupported("unsupported on " + device.info().label() + ": rows of " +
                              std::to_string(cols) + " need more work items than the device's " +
                              std::to_string(device.info().max_global_items) + " (loop limit " +
                              std::to_string(device.info().max_loop_iterations) + ")");
    global[0] = cap;
  }
}

}  // namespace tessera::ops
