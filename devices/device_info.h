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
  uint32_t mem_base_addr_align_bits = 0;
  DeviceCaps caps;
  std::vector<std::string> extensions;

  bool has_extension(const std::string& ext) const;
  // "gpu0 (NVIDIA H100 80GB HBM3)"
  std::string label() const;
};

const char* device_type_name(DeviceType t);    // "gpu", "cpu", "accelerator", "custom"
const char* vendor_class_name(VendorClass v);  // "nvidia", ..., "generic"

// Classifies a device's vendor from its vendor/platform strings; kGeneric when unknown.
VendorClass classify_vendor(const std::string& vendor, const std::string& platform_name);

// Reads every field except `id` (assigned by the registry).
DeviceInfo read_device_info(cl_platform_id platform, cl_device_id device, int platform_index,
                            int device_index);

// Typed clGetDeviceInfo / clGetPlatformInfo: get_info<cl_uint>(dev, CL_DEVICE_MAX_COMPUTE_UNITS).
template <typename T>
T get_device_info(cl_device_id device, cl_device_info param);
std::string get_device_string(cl_device_id device, cl_device_info param);
std::string get_platform_string(cl_platform_id platform, cl_platform_info param);

}  // namespace tessera
