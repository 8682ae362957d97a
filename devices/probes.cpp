// Probe kernels' host side (cl_kernels/probes.cl) and the JSON probe cache.
#include "devices/probes.h"

#include <spdlog/spdlog.h>
#include <unistd.h>
#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>
#include <vector>

#include "devices/sha256.h"

namespace tessera {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `kernel` once over `global`/`local` and returns its device time in seconds.
double timed_launch(const Device& dev, cl_kernel kernel, size_t global, size_t local) {
  ClEvent ev;
  CL_CHECK(clEnqueueNDRangeKernel(dev.queue(), kernel, 1, nullptr, &global,
                                  local ? &local : nullptr, 0, nullptr, ev.out()),
           dev.info().label());
  CL_CHECK(clWaitForEvents(1, ev.ptr()), dev.info().label());
  cl_ulong start = 0, end = 0;
  CL_CHECK(
      clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_START, sizeof(start), &start, nullptr),
      dev.info().label());
  CL_CHECK(clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_END, sizeof(end), &end, nullptr),
           dev.info().label());
  return double(end - start) * 1e-9;
}

template <typename T>
void set_arg(const Device& dev, cl_kernel k, cl_uint i, const T& v) {
  CL_CHECK(clSetKernelArg(k, i, sizeof(T), &v), dev.info().label());
}

std::string now_iso8601() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace

ProbeResult measure_device(const Device& dev) {
  const auto& info = dev.info();
  ProbeResult r;
  r.measured_at = now_iso8601();
  const bool cpu = info.type == DeviceType::kCpu;

  // Streaming read: a buffer well beyond any cache, within the device's allocation limit.
  size_t bytes = size_t(256) << 20;
  bytes = std::min<size_t>(bytes, info.max_alloc_bytes / 2);
  bytes = std::min<size_t>(bytes, info.global_mem_bytes / 4);
  bytes &= ~size_t(4095);
  const cl_uint n4 = cl_uint(bytes / 16);
  ClMem src = dev.alloc(bytes, CL_MEM_READ_ONLY);
  {
    std::vector<float> ones(bytes / 4, 1.0f);
    dev.write(src.get(), 0, ones.data(), bytes);
  }
  const size_t cu = std::max<cl_uint>(1, info.compute_units);
  const size_t max_items = cu * (cpu ? 64 : 2048);
  ClMem out = dev.alloc(max_items * sizeof(float));
  struct Variant {
    const char* kernel;
    size_t global;
    size_t local;
  };
  std::vector<Variant> variants;
  const size_t local = std::min<size_t>(cpu ? 16 : 256, info.max_work_group_size);
  variants.push_back({"read_coalesced", cu * (cpu ? 16 : 2048) / local * local, local});
  variants.push_back({"read_chunked", cu * (cpu ? 4 : 2048), 0});
  for (const auto& v : variants) {
    ClKernel k = dev.kernel("probes", v.kernel);
    set_arg(dev, k.get(), 0, src.get());
    set_arg(dev, k.get(), 1, out.get());
    set_arg(dev, k.get(), 2, n4);
    timed_launch(dev, k.get(), v.global, v.local);  // warm-up
    std::vector<double> times;
    for (int i = 0; i < 5; ++i) times.push_back(timed_launch(dev, k.get(), v.global, v.local));
    const double gbps = double(bytes) / median(times) * 1e-9;
    spdlog::debug("{}: {} {:.1f} GB/s", info.id, v.kernel, gbps);
    if (gbps > r.read_gbps) {
      r.read_gbps = gbps;
      r.read_pattern = std::string(v.kernel).substr(5);
    }
  }

  // Host <-> device copies of 64 MiB (or less), blocking, median of 5.
  {
    const size_t copy_bytes = std::min<size_t>(size_t(64) << 20, bytes);
    std::vector<char> host(copy_bytes, 1);
    std::vector<double> h2d, d2h;
    for (int i = 0; i < 6; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      dev.write(src.get(), 0, host.data(), copy_bytes);
      auto t1 = std::chrono::steady_clock::now();
      dev.read(src.get(), 0, host.data(), copy_bytes);
      auto t2 = std::chrono::steady_clock::now();
      if (i == 0) continue;  // first copy pays for page faults
      h2d.push_back(std::chrono::duration<double>(t1 - t0).count());
      d2h.push_back(std::chrono::duration<double>(t2 - t1).count());
    }
    r.h2d_gbps = double(copy_bytes) / median(h2d) * 1e-9;
    r.d2h_gbps = double(copy_bytes) / median(d2h) * 1e-9;
  }

  // fp32 FMA throughput.
  {
    ClKernel k = dev.kernel("probes", "fma_throughput");
    const size_t global = cu * (cpu ? 16 : 2048);
    const cl_uint iters = cpu ? 4096 : 8192;
    ClMem flops_out = dev.alloc(global * sizeof(float));
    set_arg(dev, k.get(), 0, flops_out.get());
    set_arg(dev, k.get(), 1, iters);
    set_arg(dev, k.get(), 2, 0.999f);
    set_arg(dev, k.get(), 3, 0.001f);
    timed_launch(dev, k.get(), global, 0);
    std::vector<double> times;
    for (int i = 0; i < 3; ++i) times.push_back(timed_launch(dev, k.get(), global, 0));
    r.fp32_gflops = double(global) * iters * 64.0 / median(times) * 1e-9;
  }

  // Launch latency: host time of enqueue + finish of an empty kernel.
  {
    ClKernel k = dev.kernel("probes", "empty_kernel");
    set_arg(dev, k.get(), 0, out.get());
    std::vector<double> times;
    const size_t one = 1;
    for (int i = 0; i < 60; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      CL_CHECK(clEnqueueNDRangeKernel(dev.queue(), k.get(), 1, nullptr, &one, nullptr, 0, nullptr,
                                      nullptr),
               info.label());
      dev.finish();
      auto t1 = std::chrono::steady_clock::now();
      if (i >= 10) times.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    r.launch_latency_us = median(times);
  }
  return r;
}

ProbeCache::ProbeCache(std::filesystem::path dir) : dir_(std::move(dir)) {}

std::filesystem::path ProbeCache::path_for(const DeviceInfo& info) const {
  // Keyed by what the measurement depends on: the device, its driver and platform.
  const std::string key = info.name + "\n" + info.driver_version + "\n" + info.platform_version;
  return dir_ / (Sha256::hex(key).substr(0, 24) + ".json");
}

std::optional<ProbeResult> ProbeCache::load(const DeviceInfo& info) const {
  if (dir_.empty()) return std::nullopt;
  std::ifstream in(path_for(info));
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    const auto v = boost::json::parse(ss.str()).as_object();
    ProbeResult r;
    r.read_gbps = v.at("read_gbps").to_number<double>();
    r.read_pattern = v.at("read_pattern").as_string().c_str();
    r.h2d_gbps = v.at("h2d_gbps").to_number<double>();
    r.d2h_gbps = v.at("d2h_gbps").to_number<double>();
    r.fp32_gflops = v.at("fp32_gflops").to_number<double>();
    r.launch_latency_us = v.at("launch_latency_us").to_number<double>();
    r.measured_at = v.at("measured_at").as_string().c_str();
    if (r.read_gbps <= 0) return std::nullopt;
    return r;
  } catch (const std::exception& e) {
    spdlog::info("probe cache {} unreadable ({}); re-measuring", path_for(info).string(), e.what());
    return std::nullopt;
  }
}

void ProbeCache::store(const DeviceInfo& info, const ProbeResult& r) const {
  if (dir_.empty()) return;
  try {
    boost::json::object o;
    o["device"] = info.name;
    o["driver_version"] = info.driver_version;
    o["platform_version"] = info.platform_version;
    o["read_gbps"] = r.read_gbps;
    o["read_pattern"] = r.read_pattern;
    o["h2d_gbps"] = r.h2d_gbps;
    o["d2h_gbps"] = r.d2h_gbps;
    o["fp32_gflops"] = r.fp32_gflops;
    o["launch_latency_us"] = r.launch_latency_us;
    o["measured_at"] = r.measured_at;
    std::filesystem::create_directories(dir_);
    const auto path = path_for(info);
    const auto tmp = path.string() + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(tmp);
      out << boost::json::serialize(o) << "\n";
      if (!out) throw std::runtime_error("cannot write " + tmp);
    }
    std::filesystem::rename(tmp, path);
  } catch (const std::exception& e) {
    spdlog::warn("probe cache: could not store results: {}", e.what());
  }
}

ProbeResult ProbeCache::get(const Device& device, bool remeasure) const {
  if (!remeasure) {
    if (auto cached = load(device.info())) return *cached;
  }
  ProbeResult r = measure_device(device);
  store(device.info(), r);
  return r;
}

}  // namespace tessera
