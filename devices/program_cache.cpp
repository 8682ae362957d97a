// Program cache: memory map of built programs, disk store of binaries with a checked header.
#include "devices/program_cache.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "devices/device.h"
#include "devices/sha256.h"

namespace tessera {

namespace {
// Bump when the entry layout or the key's inputs change: old entries then simply miss.
constexpr uint32_t kCacheFormatVersion = 1;
constexpr char kMagic[8] = {'T', 'S', 'R', 'P', 'R', 'O', 'G', '\0'};

struct EntryHeader {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t payload_bytes;
  uint8_t payload_sha256[32];
};
static_assert(sizeof(EntryHeader) == 56);

std::string build_log(cl_program program, cl_device_id device) {
  size_t size = 0;
  if (clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, 0, nullptr, &size) != CL_SUCCESS)
    return "(no build log)";
  std::string log(size, '\0');
  clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, size, log.data(), nullptr);
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  return log;
}
// A payload altered under a recomputed checksum can crash the driver while it loads it (PoCL
// asserts in pocl_binary_deserialize): load, build and create every kernel in a forked child first,
// so only the child dies, and drop the entry unless the child succeeds. The child only makes
// OpenCL calls and _exits; a child stuck on a lock another thread held at fork() times out, which
// also only costs a rebuild from source. Returns true (let the in-process checks decide) when no
// child can be started.
//
// Only on PoCL, whose runtime is known to survive a fork of a process that has initialised it (and
// whose binary loader is the one that asserts). Vendor GPU drivers are not fork-safe after
// initialisation: NVIDIA's child blocks until the deadline (measured on the H200, driver 580: every
// warm-cache run stalled), so elsewhere the in-process build-and-create-kernels check below decides.
bool fork_validation_safe(const DeviceInfo& info) {
  return info.vendor_class == VendorClass::kPocl;
}

// Creates every kernel of `program` and reads what the driver says of each: a damaged binary fails
// here rather than in the middle of a run. A kernel that claims more local memory than the device
// has is damaged too (PoCL's launch asserts on one: a payload with bytes flipped past its first
// quarter loaded, created its kernels and then aborted the process at its first launch).
bool kernels_are_usable(cl_program program, cl_device_id device) {
  cl_uint n = 0;
  if (clCreateKernelsInProgram(program, 0, nullptr, &n) != CL_SUCCESS || n == 0) return false;
  std::vector<cl_kernel> kernels(n, nullptr);
  bool ok = clCreateKernelsInProgram(program, n, kernels.data(), nullptr) == CL_SUCCESS;
  cl_ulong device_local = 0;
  ok = ok && clGetDeviceInfo(device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof(device_local), &device_local,
                             nullptr) == CL_SUCCESS;
  for (cl_kernel k : kernels) {
    if (!k) continue;
    cl_ulong local = 0;
    if (ok && (clGetKernelWorkGroupInfo(k, device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof(local), &local,
                                        nullptr) != CL_SUCCESS ||
               local > device_local))
      ok = false;
    clReleaseKernel(k);
  }
  return ok;
}

bool binary_loads_in_child(const Device& device, const std::vector<unsigned char>& payload,
                           const std::string& options) {
  if (!fork_validation_safe(device.info())) return true;
  const pid_t pid = ::fork();
  if (pid < 0) return true;
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_WRONLY);  // the driver's assertion text is noise
    if (null_fd >= 0) {
      ::dup2(null_fd, 1);
      ::dup2(null_fd, 2);
    }
    cl_device_id dev = device.handle();
    const unsigned char* bin = payload.data();
    const size_t size = payload.size();
    cl_int status = CL_SUCCESS, err = CL_SUCCESS;
    cl_program p = clCreateProgramWithBinary(device.context(), 1, &dev, &size, &bin, &status, &err);
    if (err != CL_SUCCESS || status != CL_SUCCESS) ::_exit(1);
    if (clBuildProgram(p, 1, &dev, options.c_str(), nullptr, nullptr) != CL_SUCCESS) ::_exit(1);
    ::_exit(kernels_are_usable(p, dev) ? 0 : 1);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  int status = 0;
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}
}  // namespace

std::string device_build_options(const DeviceInfo& info) {
  std::string o = "-cl-std=CL1.2";  // the common denominator every driver we target compiles
  // Half arithmetic only where the device has it; half *storage* (vload_half) works everywhere.
  if (info.caps.fp16) o += " -DHAS_FP16=1";
  if (info.caps.fp64) o += " -DHAS_FP64=1";
  // Sub-group reductions replace local-memory trees where available.
  if (info.caps.subgroups) o += " -DHAS_SUBGROUPS=1";
  if (info.caps.int_dot_product) o += " -DHAS_INT_DOT=1";
  // CPU devices want each work item to stream a contiguous range; GPUs want coalesced access.
  if (info.type == DeviceType::kCpu) o += " -DDEVICE_IS_CPU=1";
  o += " -DMAX_WORK_GROUP_SIZE=" + std::to_string(info.max_work_group_size);
  return o;
}

bool driver_caches_programs(const DeviceInfo& info) {
  return info.vendor_class == VendorClass::kPocl;
}

ProgramCache::ProgramCache(KernelSources sources, std::filesystem::path disk_dir)
    : sources_(std::move(sources)), disk_dir_(std::move(disk_dir)) {}

void ProgramCache::set_program_options(const std::string& name, std::string options) {
  std::lock_guard lock(mutex_);
  program_options_[name] = std::move(options);
}

std::string ProgramCache::program_options_key() const {
  std::lock_guard lock(mutex_);
  std::string key;
  for (const auto& [name, options] : program_options_)
    if (!options.empty()) key += (key.empty() ? "" : ";") + name + "=" + options;
  return key;
}

std::string ProgramCache::full_options(const Device& device, const std::string& name,
                                       const std::string& options) const {
  std::string full = device_build_options(device.info()) + " " + options;
  if (auto it = program_options_.find(name); it != program_options_.end() && !it->second.empty())
    full += " " + it->second;
  return full;
}

void ProgramCache::set_binary_store(BinaryStore store) {
  std::lock_guard lock(mutex_);
  binary_store_ = store;
}

bool ProgramCache::stores_binaries(const Device& device) const {
  std::lock_guard lock(mutex_);
  return stores_locked(device);
}

bool ProgramCache::stores_locked(const Device& device) const {
  return !disk_dir_.empty() &&
         (binary_store_ == BinaryStore::kAlways || !driver_caches_programs(device.info()));
}

ProgramCache::Stats ProgramCache::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

std::string ProgramCache::cache_key(const Device& device, const std::string& source,
                                    const std::string& options) const {
  const auto& i = device.info();
  Sha256 h;
  for (const std::string& part : {source, options, i.name, i.driver_version, i.platform_name,
                                  i.platform_version, std::to_string(kCacheFormatVersion)}) {
    const uint64_t n = part.size();
    h.update(&n, sizeof(n));  // length-prefixed so fields cannot run into each other
    h.update(part);
  }
  auto d = h.finish();
  return to_hex(d.data(), d.size());
}

std::filesystem::path ProgramCache::entry_path(const Device& device, const std::string& name,
                                               const std::string& options) const {
  std::lock_guard lock(mutex_);
  const std::string full = full_options(device, name, options);
  return disk_dir_ / (name + "-" + cache_key(device, sources_.resolve(name), full) + ".bin");
}

cl_program ProgramCache::get(const Device& device, const std::string& name,
                             const std::string& options) {
  std::lock_guard lock(mutex_);
  auto key = std::make_tuple(&device, name, options);
  if (auto it = programs_.find(key); it != programs_.end()) {
    ++stats_.memory_hits;
    return it->second.get();
  }
  const std::string source = sources_.resolve(name);
  const std::string full = full_options(device, name, options);
  ClProgram program;
  std::filesystem::path path;
  if (stores_locked(device)) {
    path = disk_dir_ / (name + "-" + cache_key(device, source, full) + ".bin");
    if (std::filesystem::exists(path)) {
      program = load_binary(device, path, full);
      if (program) {
        ++stats_.disk_hits;
      } else {
        ++stats_.disk_rejected;
        std::error_code ec;
        std::filesystem::remove(path, ec);  // dropped; rewritten below after the rebuild
      }
    }
  }
  if (!program) {
    program = build_from_source(device, name, source, full);
    ++stats_.builds;
    if (!path.empty()) store_binary(device, program.get(), path);
  }
  cl_program raw = program.get();
  programs_.emplace(std::move(key), std::move(program));
  return raw;
}

ClProgram ProgramCache::build_from_source(const Device& device, const std::string& name,
                                          const std::string& source, const std::string& options) {
  const char* text = source.c_str();
  const size_t len = source.size();
  cl_int err = CL_SUCCESS;
  ClProgram program(clCreateProgramWithSource(device.context(), 1, &text, &len, &err));
  cl_check(err, "clCreateProgramWithSource", device.info().label());
  cl_device_id dev = device.handle();
  const auto start = std::chrono::steady_clock::now();
  err = clBuildProgram(program.get(), 1, &dev, options.c_str(), nullptr, nullptr);
  if (err != CL_SUCCESS) {
    throw ClError("clBuildProgram(" + name + ".cl, \"" + options + "\")", err,
                  device.info().label(), "build log:\n" + build_log(program.get(), dev));
  }
  // A slow build is worth a line (TESSERA_LOG=info shows it; debug shows every build).
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  spdlog::log(ms >= 2000 ? spdlog::level::info : spdlog::level::debug,
              "program cache: built {}.cl for {} in {:.0f} ms ({})", name, device.info().label(), ms,
              options);
  return program;
}

ClProgram ProgramCache::load_binary(const Device& device, const std::filesystem::path& path,
                                    const std::string& options) {
  std::ifstream in(path, std::ios::binary);
  EntryHeader header{};
  if (!in.read(reinterpret_cast<char*>(&header), sizeof(header)) ||
      std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0 ||
      header.version != kCacheFormatVersion) {
    spdlog::info("program cache: {} has a bad header; rebuilding", path.string());
    return {};
  }
  const auto file_size = std::filesystem::file_size(path);
  if (header.payload_bytes == 0 || header.payload_bytes != file_size - sizeof(header)) {
    spdlog::info("program cache: {} is truncated; rebuilding", path.string());
    return {};
  }
  std::vector<unsigned char> payload(header.payload_bytes);
  if (!in.read(reinterpret_cast<char*>(payload.data()), std::streamsize(payload.size()))) return {};
  Sha256 h;
  h.update(payload.data(), payload.size());
  if (h.finish() != std::to_array(header.payload_sha256)) {
    spdlog::info("program cache: {} fails its checksum; rebuilding", path.string());
    return {};
  }
  if (!binary_loads_in_child(device, payload, options)) {
    spdlog::info("program cache: driver cannot load {}; rebuilding", path.string());
    return {};
  }
  cl_device_id dev = device.handle();
  const unsigned char* bin = payload.data();
  const size_t bin_size = payload.size();
  cl_int status = CL_SUCCESS, err = CL_SUCCESS;
  ClProgram program(
      clCreateProgramWithBinary(device.context(), 1, &dev, &bin_size, &bin, &status, &err));
  if (err != CL_SUCCESS || status != CL_SUCCESS) {
    spdlog::info("program cache: driver refused {}; rebuilding", path.string());
    return {};
  }
  if (clBuildProgram(program.get(), 1, &dev, options.c_str(), nullptr, nullptr) != CL_SUCCESS) {
    spdlog::info("program cache: {} does not link; rebuilding", path.string());
    return {};
  }
  // A payload altered under a recomputed checksum may still load and link.
  if (!kernels_are_usable(program.get(), dev)) {
    spdlog::info("program cache: {} has kernels the driver refuses; rebuilding", path.string());
    return {};
  }
  return program;
}

void ProgramCache::store_binary(const Device& device, cl_program program,
                                const std::filesystem::path& path) {
  try {
    cl_uint n_devices = 0;
    CL_CHECK(
        clGetProgramInfo(program, CL_PROGRAM_NUM_DEVICES, sizeof(n_devices), &n_devices, nullptr),
        device.info().label());
    std::vector<cl_device_id> devs(n_devices);
    CL_CHECK(clGetProgramInfo(program, CL_PROGRAM_DEVICES, n_devices * sizeof(cl_device_id),
                              devs.data(), nullptr),
             device.info().label());
    std::vector<size_t> sizes(n_devices);
    CL_CHECK(clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, n_devices * sizeof(size_t),
                              sizes.data(), nullptr),
             device.info().label());
    std::vector<std::vector<unsigned char>> bins(n_devices);
    std::vector<unsigned char*> ptrs(n_devices);
    for (cl_uint i = 0; i < n_devices; ++i) {
      bins[i].resize(sizes[i]);
      ptrs[i] = bins[i].data();
    }
    CL_CHECK(clGetProgramInfo(program, CL_PROGRAM_BINARIES, n_devices * sizeof(unsigned char*),
                              ptrs.data(), nullptr),
             device.info().label());
    size_t index = 0;
    while (index < n_devices && devs[index] != device.handle()) ++index;
    if (index == n_devices || bins[index].empty())
      return;  // driver offers no binary: nothing to cache
    const auto& payload = bins[index];

    EntryHeader header{};
    std::memcpy(header.magic, kMagic, sizeof(kMagic));
    header.version = kCacheFormatVersion;
    header.payload_bytes = payload.size();
    Sha256 h;
    h.update(payload.data(), payload.size());
    const auto digest = h.finish();
    std::memcpy(header.payload_sha256, digest.data(), digest.size());

    std::filesystem::create_directories(path.parent_path());
    // Write to a unique temp file, then rename: readers never see a half-written entry.
    const auto tmp = path.string() + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(&header), sizeof(header));
      out.write(reinterpret_cast<const char*>(payload.data()), std::streamsize(payload.size()));
      if (!out) throw std::runtime_error("cannot write " + tmp);
    }
    std::filesystem::rename(tmp, path);
  } catch (const std::exception& e) {
    // The cache is an optimization: failing to store an entry only costs a rebuild next time.
    spdlog::warn("program cache: could not store {}: {}", path.string(), e.what());
  }
}

}  // namespace tessera
