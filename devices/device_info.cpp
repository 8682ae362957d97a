// Capability queries: the one place that turns clGetDeviceInfo answers into a DeviceInfo value.
#include "devices/device_info.h"

#include <algorithm>
#include <cctype>
#include <sstream>
#include <stdexcept>

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

uint64_t DeviceInfo::max_group_items() const {
  uint64_t n = max_work_group_size;
  if (max_work_item_sizes[0] > 0) n = std::min(n, max_work_item_sizes[0]);
  return std::max<uint64_t>(1, n);
}

void apply_limits(DeviceInfo& info, const DeviceLimits& l) {
  auto lower = [](uint64_t& field, uint64_t limit) {
    if (limit > 0 && (field == 0 || limit < field)) field = limit;
  };
  lower(info.local_mem_bytes, l.local_mem_bytes);
  lower(info.max_work_group_size, l.max_work_group_size);
  for (uint64_t& s : info.max_work_item_sizes) lower(s, l.max_work_group_size);
  lower(info.max_global_items, l.max_global_items);
  lower(info.max_alloc_bytes, l.max_alloc_bytes);
  lower(info.max_loop_iterations, l.max_loop_iterations);
}

DeviceLimits parse_device_limits(const std::string& spec) {
  DeviceLimits l;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
    uint64_t v = 0;
    size_t used = 0;
    try {
      v = std::stoull(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    const bool digits = !value.empty() && std::isdigit(static_cast<unsigned char>(value[0]));
    if (!digits || used == 0 || used != value.size() || v == 0)
      throw TesseraError("device limits: '" + item + "' needs a positive integer value (KEY=N)");
    if (key == "local_mem") {
      l.local_mem_bytes = v;
    } else if (key == "work_group") {
      l.max_work_group_size = v;
    } else if (key == "global") {
      l.max_global_items = v;
    } else if (key == "alloc") {
      l.max_alloc_bytes = v;
    } else if (key == "loop") {
      l.max_loop_iterations = v;
    } else if (key == "own_context") {
      l.own_context = true;
    } else {
      throw TesseraError("device limits: unknown key '" + key +
                         "' (known: local_mem, work_group, global, alloc, loop, own_context)");
    }
  }
  return l;
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
  {
    size_t sizes[3] = {0, 0, 0};
    const cl_uint dims = get_device_info<cl_uint>(device, CL_DEVICE_MAX_WORK_ITEM_DIMENSIONS);
    std::vector<size_t> all(std::max<cl_uint>(dims, 3), 0);
    if (clGetDeviceInfo(device, CL_DEVICE_MAX_WORK_ITEM_SIZES, all.size() * sizeof(size_t),
                        all.data(), nullptr) == CL_SUCCESS)
      std::copy_n(all.begin(), 3, sizes);
    for (int i = 0; i < 3; ++i) d.max_work_item_sizes[i] = sizes[i];
  }
  d.timer_resolution_ns =
      std::max<uint64_t>(1, get_device_info<size_t>(device, CL_DEVICE_PROFILING_TIMER_RESOLUTION));
  if (d.name.rfind("llvmpipe", 0) == 0) d.max_loop_iterations = 65535;
  d.native_vector_width_float =
      std::max<cl_uint>(1, get_device_info<cl_uint>(device, CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT));

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
  // SVM is core from OpenCL 2.0 (optional again in 3.0: a 3.0 device without it answers 0).
  if (d.device_version.rfind("OpenCL 1.", 0) != 0) {
    cl_device_svm_capabilities svm = 0;
    if (clGetDeviceInfo(device, CL_DEVICE_SVM_CAPABILITIES, sizeof(svm), &svm, nullptr) ==
        CL_SUCCESS)
      d.caps.svm_fine_grain = (svm & CL_DEVICE_SVM_FINE_GRAIN_BUFFER) != 0;
  }
  return d;
}

}  // namespace tessera
