// Discovery of every OpenCL platform and device, and the Device's buffer/program helpers.
#include "devices/device.h"

#include <spdlog/spdlog.h>

#include <map>

namespace tessera {

Device::Device(DeviceInfo info, cl_platform_id platform, cl_device_id device, ClContext context,
               std::shared_ptr<ProgramCache> programs)
    : info_(std::move(info)),
      platform_(platform),
      device_(device),
      context_(std::move(context)),
      programs_(std::move(programs)) {
  cl_int err = CL_SUCCESS;
  queue_ = ClQueue(clCreateCommandQueue(context_.get(), device_, CL_QUEUE_PROFILING_ENABLE, &err));
  cl_check(err, "clCreateCommandQueue", info_.label());
}

ClQueue Device::new_queue() const {
  cl_int err = CL_SUCCESS;
  ClQueue q(clCreateCommandQueue(context_.get(), device_, 0, &err));
  cl_check(err, "clCreateCommandQueue", info_.label());
  return q;
}

ClMem Device::alloc(size_t bytes, cl_mem_flags flags, void* host_ptr) const {
  if (bytes == 0)
    bytes = 1;  // zero-sized buffers are invalid in OpenCL; callers may have empty tensors
  // The spec makes a buffer above the device's largest allocation CL_INVALID_BUFFER_SIZE, but some
  // drivers accept it and fail (or crash) at first use: refuse it here on every driver.
  if (info_.max_alloc_bytes && bytes > info_.max_alloc_bytes)
    throw ClError(
        "clCreateBuffer(" + std::to_string(bytes) + " bytes)", CL_INVALID_BUFFER_SIZE,
        info_.label(),
        "the device's largest allocation is " + std::to_string(info_.max_alloc_bytes) + " bytes");
  cl_int err = CL_SUCCESS;
  ClMem mem(clCreateBuffer(context_.get(), flags, bytes, host_ptr, &err));
  if (err != CL_SUCCESS)
    throw ClError("clCreateBuffer(" + std::to_string(bytes) + " bytes)", err, info_.label());
  return mem;
}

void Device::write(cl_mem buf, size_t offset, const void* src, size_t bytes, bool blocking) const {
  if (bytes == 0) return;
  CL_CHECK(clEnqueueWriteBuffer(queue_.get(), buf, blocking ? CL_TRUE : CL_FALSE, offset, bytes,
                                src, 0, nullptr, nullptr),
           info_.label());
}

void Device::read(cl_mem buf, size_t offset, void* dst, size_t bytes, bool blocking) const {
  if (bytes == 0) return;
  CL_CHECK(clEnqueueReadBuffer(queue_.get(), buf, blocking ? CL_TRUE : CL_FALSE, offset, bytes, dst,
                               0, nullptr, nullptr),
           info_.label());
}

void Device::finish() const {
  CL_CHECK(clFinish(queue_.get()), info_.label());
}

cl_program Device::program(const std::string& name, const std::string& options) const {
  return programs_->get(*this, name, options);
}

ClKernel Device::kernel(const std::string& program_name, const std::string& kernel_name,
                        const std::string& options) const {
  cl_int err = CL_SUCCESS;
  ClKernel k(clCreateKernel(program(program_name, options), kernel_name.c_str(), &err));
  if (err != CL_SUCCESS)
    throw ClError("clCreateKernel(" + program_name + "." + kernel_name + ")", err, info_.label());
  return k;
}

std::unique_ptr<Device> Device::with_limits(const DeviceLimits& limits) const {
  DeviceInfo info = info_;
  apply_limits(info, limits);
  return std::make_unique<Device>(std::move(info), platform_, device_, context_, programs_);
}

namespace {
constexpr const char* kInstallHint =
    "no OpenCL platform found. Install an OpenCL driver: for the CPU, `apt-get install "
    "pocl-opencl-icd` (Debian/Ubuntu); for GPUs, your vendor's OpenCL ICD. `clinfo -l` lists what "
    "the ICD loader sees.";

std::string platform_name(cl_platform_id platform) {
  size_t size = 0;
  if (clGetPlatformInfo(platform, CL_PLATFORM_NAME, 0, nullptr, &size) != CL_SUCCESS || size == 0)
    return "?";
  std::string name(size, '\0');
  if (clGetPlatformInfo(platform, CL_PLATFORM_NAME, size, name.data(), nullptr) != CL_SUCCESS)
    return "?";
  while (!name.empty() && name.back() == '\0') name.pop_back();
  return name;
}
}  // namespace

DeviceRegistry DeviceRegistry::discover(std::shared_ptr<ProgramCache> programs,
                                        const DeviceLimits& limits) {
  DeviceRegistry reg;
  reg.programs_ =
      programs ? std::move(programs)
               : std::make_shared<ProgramCache>(KernelSources::embedded(), std::filesystem::path());
  cl_uint n_platforms = 0;
  cl_int err = clGetPlatformIDs(0, nullptr, &n_platforms);
  if (err == -1001 /* CL_PLATFORM_NOT_FOUND_KHR */ || (err == CL_SUCCESS && n_platforms == 0))
    throw NoOpenClError(kInstallHint);
  cl_check(err, "clGetPlatformIDs", "");
  std::vector<cl_platform_id> platforms(n_platforms);
  CL_CHECK(clGetPlatformIDs(n_platforms, platforms.data(), nullptr), "");

  std::map<DeviceType, int> next_index;
  std::string empty_platforms;  // what each platform without a usable device said, for the error
  for (cl_uint p = 0; p < n_platforms; ++p) {
    cl_uint n_devices = 0;
    err = clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, nullptr, &n_devices);
    if (err == CL_DEVICE_NOT_FOUND || (err == CL_SUCCESS && n_devices == 0)) {
      empty_platforms += "; platform " + std::to_string(p) + " '" + platform_name(platforms[p]) +
                         "' reports no device";
      continue;
    }
    if (err != CL_SUCCESS) {
      // One broken platform must not hide the others.
      spdlog::warn("platform {}: clGetDeviceIDs failed with {}; skipping it", p,
                   cl_error_name(err));
      empty_platforms += "; platform " + std::to_string(p) + " '" + platform_name(platforms[p]) +
                         "': clGetDeviceIDs failed with " + cl_error_name(err);
      continue;
    }
    std::vector<cl_device_id> ids(n_devices);
    CL_CHECK(clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, n_devices, ids.data(), nullptr), "");
    // One context per platform, so devices of one platform can share buffers and wait on each
    // other's events; a platform that refuses a shared context (or DeviceLimits::own_context)
    // gets one context per device.
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM,
                                     reinterpret_cast<cl_context_properties>(platforms[p]), 0};
    ClContext shared;
    if (!limits.own_context) {
      shared = ClContext(clCreateContext(props, n_devices, ids.data(), nullptr, nullptr, &err));
      if (err != CL_SUCCESS) {
        spdlog::warn("platform {}: shared context failed ({}); one context per device", p,
                     cl_error_name(err));
        shared = ClContext();
      }
    }
    for (cl_uint d = 0; d < n_devices; ++d) {
      try {
        DeviceInfo info = read_device_info(platforms[p], ids[d], int(p), int(d));
        const char* prefix = info.type == DeviceType::kGpu           ? "gpu"
                             : info.type == DeviceType::kCpu         ? "cpu"
                             : info.type == DeviceType::kAccelerator ? "acc"
                                                                     : "custom";
        info.id = prefix + std::to_string(next_index[info.type]++);
        apply_limits(info, limits);
        ClContext ctx = shared;
        if (!ctx) {
          ctx = ClContext(clCreateContext(props, 1, &ids[d], nullptr, nullptr, &err));
          cl_check(err, "clCreateContext", info.label());
        }
        reg.devices_.push_back(
            std::make_unique<Device>(std::move(info), platforms[p], ids[d], ctx, reg.programs_));
      } catch (const ClError& e) {
        spdlog::warn("platform {} device {}: unusable, skipped: {}", p, d, e.what());
      }
    }
  }
  if (reg.devices_.empty())
    throw NoOpenClError(
        "OpenCL platforms exist but none has a usable device" + empty_platforms +
        ". PoCL reports no device when it cannot create its kernel cache directory: make "
        "$POCL_CACHE_DIR (else $XDG_CACHE_HOME/pocl or ~/.cache/pocl) a writable directory. "
        "`clinfo -l` lists what the ICD loader sees.");
  return reg;
}

std::string DeviceRegistry::ids() const {
  std::string s;
  for (const auto& d : devices_) s += (s.empty() ? "" : ", ") + d->id();
  return s;
}

Device& DeviceRegistry::get(std::string_view id) const {
  for (const auto& d : devices_) {
    const auto& i = d->info();
    if (i.id == id || std::to_string(i.platform_index) + ":" + std::to_string(i.device_index) == id)
      return *d;
  }
  throw std::runtime_error("no OpenCL device '" + std::string(id) + "'; devices here: " + ids());
}

}  // namespace tessera
