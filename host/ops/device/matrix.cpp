// Portability matrix framework: case list, guarded buffers, comparison, verdicts, timing.
#include "host/ops/device/matrix.h"

#include "host/ops/device/launch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <random>

namespace tessera::ops {
namespace {

// The guard pattern: varies per byte so a kernel writing any constant is caught.
uint8_t guard_byte(size_t i) {
  return uint8_t(0x5A ^ (i * 37u));
}

}  // namespace

std::vector<MatrixCase> all_matrix_cases() {
  std::vector<MatrixCase> cases;
  for (const MatrixFamily& f : matrix_families()) f.register_cases(cases);
  return cases;
}

MatrixCaseResult run_matrix_case(const MatrixCase& c, const Device& device, bool timing) {
  try {
    return c.run(device, timing);
  } catch (const MatrixUnsupported& e) {
    return unsupported(e.what());
  } catch (const LaunchUnsupported& e) {
    return unsupported(e.what());
  } catch (const std::exception& e) {
    // A build failure or CL error is the case's verdict, reported in the table, not a crash.
    MatrixCaseResult r;
    r.status = "fail";
    r.note = e.what();
    return r;
  }
}

MatrixCaseResult unsupported(std::string why) {
  MatrixCaseResult r;
  r.status = "unsupported";
  r.note = std::move(why);
  return r;
}

GuardedBuffer::GuardedBuffer(const Device& device, size_t bytes, const void* data)
    : device_(&device), bytes_(bytes) {
  if (bytes + kGuardBytes > device.info().max_alloc_bytes) {
    throw MatrixUnsupported("needs a " + std::to_string(bytes) + "-byte buffer; " + device.id() +
                            " allocates at most " + std::to_string(device.info().max_alloc_bytes));
  }
  std::vector<uint8_t> init(bytes + kGuardBytes);
  if (data) {
    std::memcpy(init.data(), data, bytes);
  } else {
    std::memset(init.data(), 0xFF, bytes);
  }
  for (size_t i = 0; i < kGuardBytes; ++i) init[bytes + i] = guard_byte(i);
  mem_ = device.alloc(init.size());
  device.write(mem_.get(), 0, init.data(), init.size());
}

void GuardedBuffer::read_into(void* dst) const {
  if (bytes_ > 0) device_->read(mem_.get(), 0, dst, bytes_);
}

std::string GuardedBuffer::check_guard() const {
  std::vector<uint8_t> guard(kGuardBytes);
  device_->read(mem_.get(), bytes_, guard.data(), kGuardBytes);
  for (size_t i = 0; i < kGuardBytes; ++i) {
    if (guard[i] != guard_byte(i)) {
      return "out-of-bounds write " + std::to_string(i) + " bytes past a " +
             std::to_string(bytes_) + "-byte output";
    }
  }
  return {};
}

Comparison compare(std::span<const float> got, std::span<const float> ref, double scale_floor) {
  Comparison c;
  double max_ref = scale_floor, err_sq = 0, ref_sq = 0;
  const size_t n = std::min(got.size(), ref.size());
  for (size_t i = 0; i < n; ++i) {
    const double r = ref[i];
    const double g = got[i];
    if (!std::isfinite(r)) continue;  // the reference decides what is finite
    if (!std::isfinite(g)) {
      if (c.nonfinite++ == 0) c.worst_index = i;
      continue;
    }
    const double d = std::fabs(g - r);
    if (d > c.max_abs) {
      c.max_abs = d;
      if (c.nonfinite == 0) c.worst_index = i;
    }
    max_ref = std::max(max_ref, std::fabs(r));
    err_sq += d * d;
    ref_sq += r * r;
  }
  if (got.size() != ref.size()) c.nonfinite += std::max(got.size(), ref.size()) - n;
  c.max_rel = max_ref > 0 ? c.max_abs / max_ref : c.max_abs;
  c.nmse = ref_sq > 0 ? err_sq / ref_sq : err_sq;
  return c;
}

MatrixCaseResult judge(const Comparison& c, double tolerance,
                       const std::vector<std::string>& guards) {
  MatrixCaseResult r;
  r.max_abs_err = c.max_abs;
  r.max_rel_err = c.max_rel;
  r.nmse = c.nmse;
  for (const std::string& g : guards) {
    if (!g.empty()) {
      r.status = "fail";
      r.note = g;
      return r;
    }
  }
  if (c.nonfinite > 0) {
    r.status = "fail";
    r.note = std::to_string(c.nonfinite) + " NaN/Inf or unwritten outputs (first at " +
             std::to_string(c.worst_index) + ")";
    return r;
  }
  if (c.max_rel > tolerance) {
    r.status = "fail";
    char buf[128];
    std::snprintf(buf, sizeof(buf), "error %.3g over tolerance %.3g at element %zu", c.max_rel,
                  tolerance, c.worst_index);
    r.note = buf;
    return r;
  }
  r.status = "pass";
  return r;
}

size_t count_mismatches(std::span<const int32_t> got, std::span<const int32_t> ref) {
  size_t bad = std::max(got.size(), ref.size()) - std::min(got.size(), ref.size());
  for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i) bad += got[i] != ref[i];
  return bad;
}

double median_kernel_seconds(const Device& device, const std::function<ClEvent()>& launch,
                             int reps) {
  launch();  // warm-up: first-launch costs (program upload, page faults) are not the kernel's
  device.finish();
  std::vector<double> times;
  for (int i = 0; i < std::max(1, reps); ++i) {
    ClEvent ev = launch();
    CL_CHECK(clWaitForEvents(1, ev.ptr()), device.info().label());
    cl_ulong start = 0, end = 0;
    CL_CHECK(clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_START, sizeof(start), &start,
                                     nullptr),
             device.info().label());
    CL_CHECK(
        clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_END, sizeof(end), &end, nullptr),
        device.info().label());
    times.push_back(double(end - start) * 1e-9);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::vector<float> random_floats(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace tessera::ops
