// Capability queries: the one place that turns clGetDeviceInfo answers into a DeviceInfo value.
#include "devices/device_info.h"

#include <algorithm>
#include <cctype>
#include <sstream>

namespace tessera {

template <typename T>
T get_device_info(cl_device_id device, cl_device_info param) {
  T value{};
  CL_CHECK(clGetDeviceInfo(device, param, sizeof(T), &value, nullptr), "");
  return value;
}
template cl_uint get_device_info<cl_uint>(cl_device_id, cl_device_info);
template cl_ulong get_device_info<cl_ulong>(cl_device_id, cl_device_info);

std::string get_device_string(cl_device_id device, cl_device_info param) {
  size_t size = 0;
  CL_CHECK(clGetDeviceInfo(device, param, 0, nullptr, &size), "");
  std::string s(size, '\0');
  CL_CHECK(clGetDeviceInfo(device, param, size, s.data(), nullptr), "");
  while (!s.empty() && (s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string get_platform_string(cl_platform_id platform, cl_platform_info param) {
  size_t size = 0;
  CL_CHECK(clGetPlatformInfo(platform, param, 0, nullptr, &size), "");
  std::string s(size, '\0');
  CL_CHECK(clGetPlatformInfo(platform, param, size, s.data(), nullptr), "");
  while (!s.empty() && (s.back() == '\0' || s.back() == ' ')) s.pop_back();
  return s;
}

bool DeviceInfo::has_extension(const std::string& ext) const {
  return std::find(extensions.begin(), extensions.end(), ext) != extensions.end();
}

std::string DeviceInfo::label() const {
  return id + " (" + name + ")";
}

const char* device_type_name(DeviceType t) {
  switch (t) {
    case DeviceType::kGpu:
      return "gpu";
    case DeviceType::kCpu:
      return "cpu";
    case DeviceType::kAccelerator:
      return "accelerator";
    case DeviceType::kCustom:
      return "custom";
  }
  return "custom";
}

const char* vendor_class_name(VendorClass v) {
  switch (v) {
    case VendorClass::kNvidia:
      return "nvidia";
    case VendorClass::kAmd:
      return "amd";
    case VendorClass::kIntel:
      return "intel";
    case VendorClass::kArm:
      return "arm";
    case VendorClass::kQualcomm:
      return "qualcomm";
    case VendorClass::kApple:
      return "apple";
    case VendorClass::kPocl:
      return "pocl";
    case VendorClass::kGeneric:
      return "generic";
  }
  return "generic";
}

VendorClass classify_vendor(const std::string& vendor, const std::string& platform_name) {
  auto lower = [](std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  };
  const std::string v = lower(vendor), p = lower(platform_name);
  // The platform decides first for PoCL: its CPU device reports the CPU maker as vendor.
  if (p.find("portable computing language") != std::string::npos) return VendorClass::kPocl;
  if (v.find("nvidia") != std::string::npos) return VendorClass::kNvidia;
  if (v.find("advanced micro devices") != std::string::npos || v.find("amd") != std::string::npos)
    return VendorClass::kAmd;
  if (v.find("intel") != std::string::npos) return VendorClass::kIntel;
  if (v.find("arm") != std::string::npos) return VendorClass::kArm;
  if (v.find("qualcomm") != std::string::npos) return VendorClass::kQualcomm;
  if (v.find("apple") != std::string::npos) return VendorClass::kApple;
  return VendorClass::kGeneric;
}

DeviceInfo read_device_info(cl_platform_id platform, cl_device_id device, int platform_index,
                            int device_index) {
  DeviceInfo d;
  d.platform_index = platform_index;
  d.device_index = device_index;
  const auto type = get_device_info<cl_ulong>(device, CL_DEVICE_TYPE);
  if (type & CL_DEVICE_TYPE_GPU) {
    d.type = DeviceType::kGpu;
  } else if (type & CL_DEVICE_TYPE_CPU) {
    d.type = DeviceType::kCpu;
  } else if (type & CL_DEVICE_TYPE_ACCELERATOR) {
    d.type = DeviceType::kAccelerator;
  } else {
    d.type = DeviceType::kCustom;
  }
  d.name = get_device_string(device, CL_DEVICE_NAME);
  d.vendor = get_device_string(device, CL_DEVICE_VENDOR);
  d.platform_name = get_platform_string(platform, CL_PLATFORM_NAME);
  d.platform_version = get_platform_string(platform, CL_PLATFORM_VERSION);
  d.driver_version = get_device_string(device, CL_DRIVER_VERSION);
  d.device_version = get_device_string(device, CL_DEVICE_VERSION);
  d.opencl_c_version = get_device_string(device, CL_DEVICE_OPENCL_C_VERSION);
  d.vendor_class = classify_vendor(d.vendor, d.platform_name);
  d.global_mem_bytes = get_device_info<cl_ulong>(device, CL_DEVICE_GLOBAL_MEM_SIZE);
  d.max_alloc_bytes = get_device_info<cl_ulong>(device, CL_DEVICE_MAX_MEM_ALLOC_SIZE);
  d.local_mem_bytes = get_device_info<cl_ulong>(device, CL_DEVICE_LOCAL_MEM_SIZE);
  d.compute_units = get_device_info<cl_uint>(device, CL_DEVICE_MAX_COMPUTE_UNITS);
  d.max_clock_mhz = get_device_info<cl_uint>(device, CL_DEVICE_MAX_CLOCK_FREQUENCY);
  d.max_work_group_size = get_device_info<size_t>(device, CL_DEVICE_MAX_WORK_GROUP_SIZE);
  d.mem_base_addr_align_bits = get_device_info<cl_uint>(device, CL_DEVICE_MEM_BASE_ADDR_ALIGN);

  std::istringstream ext(get_device_string(device, CL_DEVICE_EXTENSIONS));
  for (std::string e; ext >> e;) d.extensions.push_back(e);

  d.caps.fp16 = d.has_extension("cl_khr_fp16");
  d.caps.fp64 = d.has_extension("cl_khr_fp64") ||
                get_device_info<cl_ulong>(device, CL_DEVICE_DOUBLE_FP_CONFIG) != 0;
  d.caps.subgroups = d.has_extension("cl_khr_subgroups") || d.has_extension("cl_intel_subgroups");
  if (!d.caps.subgroups && d.device_version.rfind("OpenCL 3.", 0) == 0) {
    // OpenCL 3.0 made sub-groups optional core functionality: a non-zero count means supported.
    cl_uint n = 0;
    if (clGetDeviceInfo(device, CL_DEVICE_MAX_NUM_SUB_GROUPS, sizeof(n), &n, nullptr) == CL_SUCCESS)
      d.caps.subgroups = n > 0;
  }
  d.caps.int_dot_product = d.has_extension("cl_khr_integer_dot_product");
  cl_bool unified = CL_FALSE;
  // CL_DEVICE_HOST_UNIFIED_MEMORY is deprecated in 2.0 but still answered by every driver we know;
  // CPU devices share memory by construction.
  if (clGetDeviceInfo(device, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof(unified), &unified, nullptr) !=
      CL_SUCCESS)
    unified = CL_FALSE;
  d.caps.unified_memory = unified == CL_TRUE || d.type == DeviceType::kCpu;
  return d;
}

}  // namespace tessera
