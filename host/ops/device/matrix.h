// The portability matrix: every op family registers cases (kernel x format x shape), each run on a
// device against its scalar reference. `tessera matrix` and tests/matrix run them.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "devices/cl_handle.h"
#include "devices/device.h"
#include "host/common/error.h"

namespace tessera::ops {

struct MatrixCaseResult {
  std::string status = "fail";  // "pass" | "fail" | "unsupported"
  double max_abs_err = 0;
  double max_rel_err = 0;  // normalized: max|got - ref| / max|ref|
  double nmse = 0;         // sum (got-ref)^2 / sum ref^2
  double seconds = 0;      // median kernel time (profiling events), timing mode only
  double bytes = 0;        // bytes one launch must move (for GB/s)
  double flops = 0;        // flops of one launch (for GFLOP/s)
  std::string note;        // why it failed / is unsupported, or extra detail
};

// One kernel x format x shape. `run` creates what it needs on the device, runs the kernel and the
// reference, compares, and (timing) measures. It may throw: run_matrix_case turns that into "fail".
struct MatrixCase {
  std::string kernel, format, shape;  // e.g. "rms_norm", "f32", "7x1000"
  std::function<MatrixCaseResult(const Device&, bool timing)> run;
  std::string name() const { return kernel + "/" + format + "/" + shape; }
};

// Each op family file defines, in namespace tessera::ops, at the start of a line:
//   void register_<family>_cases(std::vector<MatrixCase>& out)
// The build finds these definitions (cmake/MatrixFamilies.cmake) and generates the list below, so a
// family is added by adding its file: no registry to edit, no static-library dead-stripping.
struct MatrixFamily {
  const char* name;  // "norm"
  void (*register_cases)(std::vector<MatrixCase>& out);
};
std::span<const MatrixFamily> matrix_families();  // generated, sorted by name

// Every case of every family, in family order.
std::vector<MatrixCase> all_matrix_cases();

// Runs one case; an exception (kernel build failure, CL error, reference error) becomes "fail" with
// the message as note; MatrixUnsupported and LaunchUnsupported (a device limit the op cannot shape
// around) become "unsupported". Not thread-safe per device (cases use the device's queue).
MatrixCaseResult run_matrix_case(const MatrixCase& c, const Device& device, bool timing);

// ---- Helpers for case authors ----

MatrixCaseResult unsupported(std::string why);

// Thrown by a case (or by GuardedBuffer) when the device cannot hold or run it at all, e.g. a
// buffer over the device's max allocation; run_matrix_case reports it as "unsupported", not "fail".
struct MatrixUnsupported : TesseraError {
  using TesseraError::TesseraError;
};

// A device buffer followed by a guard zone filled with a known byte pattern; check_guard() reports
// out-of-bounds writes past the payload. Without initial data the payload is filled with 0xFF bytes
// (a NaN for f32, -1 for int32) so elements a kernel forgot to write fail the comparison.
// Throws MatrixUnsupported when the buffer exceeds the device's max allocation.
class GuardedBuffer {
 public:
  static constexpr size_t kGuardBytes = 4096;
  GuardedBuffer(const Device& device, size_t bytes, const void* data = nullptr);
  template <typename T>
  GuardedBuffer(const Device& device, const std::vector<T>& data)
      : GuardedBuffer(device, data.size() * sizeof(T), data.data()) {}

  cl_mem mem() const { return mem_.get(); }
  size_t bytes() const { return bytes_; }
  // Reads the payload (blocking).
  template <typename T>
  std::vector<T> download() const {
    std::vector<T> v(bytes_ / sizeof(T));
    read_into(v.data());
    return v;
  }
  // "" when the guard zone is intact, otherwise where the first overwritten byte is.
  std::string check_guard() const;

 private:
  void read_into(void* dst) const;
  const Device* device_;
  size_t bytes_;
  ClMem mem_;
};

// Error of `got` against `ref`. max_rel divides by max(max|ref|, scale_floor): element-wise ops
// whose outputs can all be near zero (gelu of a negative input) pass the input's magnitude.
struct Comparison {
  double max_abs = 0, max_rel = 0, nmse = 0;
  size_t nonfinite = 0;  // NaN/Inf in got where ref is finite
  size_t worst_index = 0;
};
Comparison compare(std::span<const float> got, std::span<const float> ref, double scale_floor = 0);

// Verdict from a comparison, the guards ("" when intact) and a tolerance on max_rel:
// fail on out-of-bounds writes, then on NaN/Inf, then on error above tolerance.
MatrixCaseResult judge(const Comparison& c, double tolerance,
                       const std::vector<std::string>& guards);

// Number of positions where two integer vectors differ (exact outputs: expert ids, argmax).
size_t count_mismatches(std::span<const int32_t> got, std::span<const int32_t> ref);

// Median device time (seconds) of `launch`, which enqueues work and returns the event of its (last)
// kernel, over `reps` runs after one warm-up. Uses profiling events.
double median_kernel_seconds(const Device& device, const std::function<ClEvent()>& launch,
                             int reps = 10);

// Deterministic test data: uniform in [lo, hi), seeded.
std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f);

}  // namespace tessera::ops
