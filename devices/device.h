// The device contract: DeviceRegistry discovers every OpenCL device; a Device owns its queue and
// hands out buffers, programs and kernels. Devices never decide placement.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "devices/cl_error.h"
#include "devices/cl_handle.h"
#include "devices/device_info.h"
#include "devices/program_cache.h"

namespace tessera {

// Raised when the machine has no usable OpenCL platform; says how to install one.
class NoOpenClError : public TesseraError {
 public:
  using TesseraError::TesseraError;
};

// Work a device cannot run within its limits (work-group size, local memory, global size), raised
// before anything is enqueued: the caller reports it ("unsupported on gpu0 (...): ..."), it is
// never run partially.
class DeviceUnsupported : public TesseraError {
 public:
  using TesseraError::TesseraError;
};

class Device {
 public:
  // `context` may be shared with the other devices of the same platform.
  Device(DeviceInfo info, cl_platform_id platform, cl_device_id device, ClContext context,
         std::shared_ptr<ProgramCache> programs);
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const DeviceInfo& info() const { return info_; }
  const std::string& id() const { return info_.id; }
  cl_device_id handle() const { return device_; }
  cl_platform_id platform() const { return platform_; }
  cl_context context() const { return context_.get(); }
  // The in-order, profiling-enabled queue. Drive it from one thread at a time.
  cl_command_queue queue() const { return queue_.get(); }
  // Another in-order queue on this device, without profiling (for work beside the main queue's,
  // ordered against it by events: e.g. weight writes while kernels run). Throws ClError.
  ClQueue new_queue() const;

  // Device buffer of `bytes` (over `host_ptr` with CL_MEM_USE_HOST_PTR); throws ClError naming the
  // device and size.
  ClMem alloc(size_t bytes, cl_mem_flags flags = CL_MEM_READ_WRITE, void* host_ptr = nullptr) const;
  void write(cl_mem buf, size_t offset, const void* src, size_t bytes, bool blocking = true) const;
  void read(cl_mem buf, size_t offset, void* dst, size_t bytes, bool blocking = true) const;
  void finish() const;

  // Program `name` (cl_kernels/<name>.cl) built for this device; owned by the program cache.
  cl_program program(const std::string& name, const std::string& options = "") const;
  // A new kernel object of that program (kernels hold arguments: one per user/thread).
  ClKernel kernel(const std::string& program_name, const std::string& kernel_name,
                  const std::string& options = "") const;
  ProgramCache& programs() const { return *programs_; }

  // The same OpenCL device (own queue, shared context and program cache) with its limits lowered
  // to `limits`: tests check that every kernel adapts to small devices or reports unsupported.
  std::unique_ptr<Device> with_limits(const DeviceLimits& limits) const;

 private:
  DeviceInfo info_;
  cl_platform_id platform_;
  cl_device_id device_;
  ClContext context_;
  ClQueue queue_;
  std::shared_ptr<ProgramCache> programs_;
};

class DeviceRegistry {
 public:
  // Discovers every device of every platform. `programs` null: an in-memory cache over the
  // embedded sources (the CLI passes one with a disk directory and the sources its settings name;
  // devices/ reads no environment). `limits` (the CLI's TESSERA_DEVICE_LIMITS) lowers every
  // device's limits, to run the matrix as a smaller device would; the default lowers nothing.
  // Throws NoOpenClError when no platform or device exists.
  static DeviceRegistry discover(std::shared_ptr<ProgramCache> programs = nullptr,
                                 const DeviceLimits& limits = {});

  const std::vector<std::unique_ptr<Device>>& devices() const { return devices_; }
  // Device by id ("gpu0") or by "platform:device" index ("0:1"); throws listing the ids that exist.
  Device& get(std::string_view id) const;
  std::string ids() const;  // "gpu0, cpu0"
  const std::shared_ptr<ProgramCache>& programs() const { return programs_; }

 private:
  std::vector<std::unique_ptr<Device>> devices_;
  std::shared_ptr<ProgramCache> programs_;
};

}  // namespace tessera
