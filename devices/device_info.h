// What a device is and can do, read once at discovery through typed clGetDeviceInfo queries.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "devices/cl_error.h"

namespace tessera {

enum class DeviceType { kGpu, kCpu, kAccelerator, kCustom };

// Vendor family, for tuning defaults only; kernels branch on capabilities, never on this.
enum class VendorClass { kGeneric, kNvidia, kAmd, kIntel, kArm, kQualcomm, kApple, kPocl };

struct DeviceCaps {
  bool fp16 = false;             // cl_khr_fp16: half arithmetic (half *storage* works everywhere)
  bool fp64 = false;             // cl_khr_fp64 or a non-zero double config
  bool subgroups = false;        // cl_khr_subgroups / cl_intel_subgroups, or OpenCL 3.0 sub-groups
  bool int_dot_product = false;  // cl_khr_integer_dot_product
  bool unified_memory = false;   // host and device share memory (CPUs, iGPUs)
  bool svm_fine_grain = false;   // OpenCL 2.0+ fine-grained buffer SVM (CL_DEVICE_SVM_CAPABILITIES)
};

struct DeviceInfo {
  std::string id;          // stable id: gpu0, cpu0, acc0, custom0 (per type, in discovery order)
  int platform_index = 0;  // index of the platform in clGetPlatformIDs order
  int device_index = 0;    // index of the device within its platform
  DeviceType type = DeviceType::kCpu;
  VendorClass vendor_class = VendorClass::kGeneric;
  std::string name;
  std::string vendor;
  std::string platform_name;
  std::string platform_version;
  std::string driver_version;
  std::string device_version;    // "OpenCL 3.0 ..."
  std::string opencl_c_version;  // "OpenCL C 1.2 ..."
  uint64_t global_mem_bytes = 0;
  uint64_t max_alloc_bytes = 0;
  uint64_t local_mem_bytes = 0;
  uint32_t compute_units = 0;
  uint32_t max_clock_mhz = 0;
  uint64_t max_work_group_size = 0;
  uint64_t max_work_item_sizes[3] = {0, 0, 0};  // per dimension, within one work-group
  // Most work items of one NDRange per dimension this engine will launch at once; larger launches
  // are split (element-wise ops) or refused. OpenCL has no query for it: it is the size_t range
  // unless a driver is known to mishandle more (see read_device_info) or a test lowers it.
  uint64_t max_global_items = uint64_t(1) << 32;
  // Most iterations one loop of a work item may run; 0: no limit. Mesa's llvmpipe (rusticl) ends
  // every loop after 65535 iterations (gallivm's loop limiter) without an error; OpenCL cannot
  // report it, so read_device_info sets it from the device name. Launch shapes give each work item
  // fewer iterations than this.
  uint64_t max_loop_iterations = 0;
  uint32_t mem_base_addr_align_bits = 0;
  uint64_t timer_resolution_ns = 1;        // CL_DEVICE_PROFILING_TIMER_RESOLUTION
  uint32_t native_vector_width_float = 1;  // CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT
  DeviceCaps caps;
  std::vector<std::string> extensions;

  bool has_extension(const std::string& ext) const;
  // Most work items of a 1-D work-group: max_work_group_size within max_work_item_sizes[0].
  uint64_t max_group_items() const;
  // "gpu0 (NVIDIA H100 80GB HBM3)"
  std::string label() const;
};

const char* device_type_name(DeviceType t);    // "gpu", "cpu", "accelerator", "custom"
const char* vendor_class_name(VendorClass v);  // "nvidia", ..., "generic"

// Classifies a device's vendor from its vendor/platform strings; kGeneric when unknown.
VendorClass classify_vendor(const std::string& vendor, const std::string& platform_name);

// Device limits a test (or TESSERA_DEVICE_LIMITS) lowers to check that every kernel adapts or
// reports unsupported: 0 keeps the device's own value.
struct DeviceLimits {
  uint64_t local_mem_bytes = 0;
  uint64_t max_work_group_size = 0;
  uint64_t max_global_items = 0;
  uint64_t max_alloc_bytes = 0;
  uint64_t max_loop_iterations = 0;
  // Every device in a context of its own, as devices of different platforms are (devices of one
  // platform otherwise share one): runs the paths between platforms on one platform's devices.
  bool own_context = false;
};
// Lowers `info`'s limits to `limits` (never raises them).
void apply_limits(DeviceInfo& info, const DeviceLimits& limits);
// Parses "local_mem=4096,work_group=16,global=1024,alloc=1048576,loop=1000,own_context=1"
// (TESSERA_DEVICE_LIMITS syntax); throws TesseraError naming the bad key or value.
DeviceLimits parse_device_limits(const std::string& spec);

// Reads every field except `id` (assigned by the registry).
DeviceInfo read_device_info(cl_platform_id platform, cl_device_id device, int platform_index,
                            int device_index);

// Typed clGetDeviceInfo / clGetPlatformInfo: get_info<cl_uint>(dev, CL_DEVICE_MAX_COMPUTE_UNITS).
template <typename T>
T get_device_info(cl_device_id device, cl_device_info param);
std::string get_device_string(cl_device_id device, cl_device_info param);
std::string get_platform_string(cl_platform_id platform, cl_platform_info param);

}  // namespace tessera
