// OpenCL error handling: every failing call becomes a ClError naming the call, the device and the
// error's symbolic name (CL_OUT_OF_RESOURCES, not -5).
#pragma once

#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>

#include <string>

#include "host/common/error.h"

namespace tessera {

// Symbolic name of an OpenCL status code, e.g. "CL_OUT_OF_RESOURCES"; "CL_UNKNOWN_ERROR(-1234)"
// otherwise.
std::string cl_error_name(cl_int code);

class ClError : public TesseraError {
 public:
  // `call` is the OpenCL call's text, `device` the device's id or name ("" when not
  // device-specific), `detail` extra context such as a build log.
  ClError(std::string call, cl_int code, std::string device, std::string detail = {});

  cl_int code() const noexcept { return code_; }
  const std::string& call() const noexcept { return call_; }
  const std::string& device() const noexcept { return device_; }

 private:
  std::string call_;
  cl_int code_;
  std::string device_;
};

// Throws ClError when `code` is not CL_SUCCESS.
inline void cl_check(cl_int code, const char* call, const std::string& device) {
  if (code != CL_SUCCESS) throw ClError(call, code, device);
}

}  // namespace tessera

// CL_CHECK(clFinish(q), device_name): evaluates the call once and throws ClError with its text.
#define CL_CHECK(call, device) ::tessera::cl_check((call), #call, (device))
