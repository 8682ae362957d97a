// Probe kernels' host side (cl_kernels/probes.cl) and the JSON probe cache.
#include "devices/probes.h"

#include <spdlog/spdlog.h>
#include <unistd.h>
#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
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

double event_seconds(const Device& dev, cl_event ev) {
  cl_ulong start = 0, end = 0;
  CL_CHECK(clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof(start), &start, nullptr),
           dev.info().label());
  CL_CHECK(clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof(end), &end, nullptr),
           dev.info().label());
  return end > start ? double(end - start) * 1e-9 : 0.0;
}

// Times `kernel` over `global`/`local`: one warm-up, then batches of back-to-back launches, doubled
// until a batch's host time reaches 20 ms and its device time 1000 timer ticks (or the batch takes
// half a second, or 256 launches).
// device_s: median profiled time of the last batch's launches; wall_s: its host time per launch.
ProbeTiming time_kernel(const Device& dev, cl_kernel kernel, size_t global, size_t local) {
  const auto& info = dev.info();
  auto enqueue = [&](cl_event* ev) {
    CL_CHECK(clEnqueueNDRangeKernel(dev.queue(), kernel, 1, nullptr, &global,
                                    local ? &local : nullptr, 0, nullptr, ev),
             info.label());
  };
  enqueue(nullptr);
  dev.finish();
  const double min_device_s = 1000.0 * double(info.timer_resolution_ns) * 1e-9;
  ProbeTiming t;
  for (int reps = 3;; reps *= 2) {
    std::vector<ClEvent> events(static_cast<size_t>(reps));
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& e : events) enqueue(e.out());
    dev.finish();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<double> times;
    double total = 0;
    for (const auto& e : events) {
      times.push_back(event_seconds(dev, e.get()));
      total += times.back();
    }
    t.device_s = median(times);
    t.wall_s = wall / reps;
    if ((wall >= 0.02 && total >= min_device_s) || wall >= 0.5 || reps >= 256) break;
  }
  return t;
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

// fma_throughput's value for work item `gid`, computed as the kernel does (fma is exact in both).
float fma_expected(uint32_t gid, uint32_t iters, float a, float b) {
  const float x0 = float(gid) * 1e-7f;
  float x[8] = {x0, x0 + 0.1f, x0 + 0.2f, x0 + 0.3f, x0 + 0.4f, x0 + 0.5f, x0 + 0.6f, x0 + 0.7f};
  for (uint32_t i = 0; i < iters; ++i)
    for (float& v : x) v = std::fma(v, a, b);
  // Lanes of a float4 are equal: s = 4 * ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) per
  // lane.
  const float s = ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
  return s + s + s + s;
}

void add_note(std::string& note, const std::string& what) {
  note += (note.empty() ? "" : "; ") + what;
}

}  // namespace

ProbeBounds probe_bounds(const DeviceInfo& info) {
  // Clocks below 3 GHz are taken as 3 GHz (CPU turbo; llvmpipe reports 300 MHz); compute units
  // at least 1.
  const double ghz = std::max(3.0, double(info.max_clock_mhz) / 1000.0);
  const double cu = std::max<uint32_t>(1, info.compute_units);
  ProbeBounds b;
  if (info.type == DeviceType::kCpu) {
    // A core loads at most two 64-byte lines a cycle from L1, and no CPU memory system streams a
    // buffer larger than its caches faster than 1 TB/s. FMA: two pipes of the widest vector
    // (>= 16 fp32 lanes, AVX-512), 2 flops each.
    b.read_gbps = std::min(cu * 128.0 * ghz, 1000.0);
    b.fp32_gflops = cu * 2.0 * std::max<uint32_t>(16, info.native_vector_width_float) * 2.0 * ghz;
    b.copy_gbps = 1000.0;
  } else {
    // GPUs and accelerators: 256 fp32 lanes per compute unit and 256 bytes a cycle per compute
    // unit are above any device made; no memory streams past 20 TB/s.
    b.read_gbps = std::min(cu * 256.0 * ghz, 20000.0);
    b.fp32_gflops = cu * 256.0 * 2.0 * ghz;
    b.copy_gbps = 1000.0;
  }
  return b;
}

ProbeResult conservative_probe(const DeviceInfo& info) {
  ProbeResult r;
  const double cu = std::max<uint32_t>(1, info.compute_units);
  const bool cpu = info.type == DeviceType::kCpu;
  r.read_gbps = cpu ? 5.0 : 50.0;
  r.read_pattern = cpu ? "chunked" : "coalesced";
  r.h2d_gbps = r.d2h_gbps = cpu ? 2.0 : 4.0;
  r.fp32_gflops = cu * (cpu ? 2.0 : 20.0);
  r.launch_latency_us = cpu ? 50.0 : 20.0;
  r.launch_stream_us = cpu ? 50.0 : 10.0;
  return r;
}

double trusted_rate(const std::string& what, double amount, const ProbeTiming& t, bool output_ok,
                    double timer_resolution_s, double bound, double fallback, std::string& note) {
  auto rate = [&](double s) { return s > 0 ? amount / s : INFINITY; };
  const double by_device = rate(t.device_s), by_wall = rate(t.wall_s);
  if (!output_ok) {
    add_note(note, what + ": kernel output wrong, conservative figure");
    return fallback;
  }
  // 20 ticks: each launch's time within 5% of the timer's step (a median over the batch); the
  // H200's 1 us timer and its ~68 us streaming read are believed, llvmpipe's 1 ns for a 64 MiB
  // read is not.
  const bool device_ok = t.device_s >= 20.0 * std::max(timer_resolution_s, 1e-9) &&
                         t.device_s <= 1.5 * t.wall_s + 1e-6 && by_device <= bound &&
                         std::isfinite(by_device);
  if (device_ok) return by_device;
  if (std::isfinite(by_wall) && by_wall <= bound) {
    char buf[160];
    std::snprintf(buf, sizeof(buf),
                  "%s: profiling time %.3g s implausible (%.3g/s), host clock used", what.c_str(),
                  t.device_s, by_device);
    add_note(note, buf);
    return by_wall;
  }
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%s: %.3g/s above the bound %.3g/s, conservative figure",
                what.c_str(), std::min(by_device, by_wall), bound);
  add_note(note, buf);
  return fallback;
}

ProbeResult measure_device(const Device& dev) {
  const auto& info = dev.info();
  ProbeResult r;
  r.measured_at = now_iso8601();
  const bool cpu = info.type == DeviceType::kCpu;
  const ProbeBounds bounds = probe_bounds(info);
  const ProbeResult fallback = conservative_probe(info);
  const double res_s = double(info.timer_resolution_ns) * 1e-9;
  // Work items so that no item loops past the device's loop limit (llvmpipe: 65535).
  auto loop_items = [&](size_t iterations) -> size_t {
    const uint64_t limit = info.max_loop_iterations;
    return limit == 0 ? 1 : (iterations + limit - 1) / limit;
  };

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
  struct Variant {
    const char* kernel;
    size_t global;
    size_t local;
  };
  std::vector<Variant> variants;
  const size_t local = std::min<size_t>(cpu ? 16 : 256, info.max_group_items());
  const size_t coalesced =
      (std::max(cu * (cpu ? 16 : 2048), loop_items(n4)) + local - 1) / local * local;
  variants.push_back({"read_coalesced", coalesced, local});
  // read_chunked's loop takes 4 float4 per iteration.
  // On CPUs one item per work group: with the local size left to the driver, PoCL puts a small
  // range in one group, which one thread runs (PoCL 5.0 on 16 cores then measured 12-18 GB/s
  // while kernels streamed 70-100 GB/s; 2.5x here on 2 cores).
  variants.push_back(
      {"read_chunked", std::max(cu * (cpu ? 4 : 2048), loop_items(n4 / 4) + 1), cpu ? 1u : 0u});
  // CPUs: the same with 64-byte loads, as the matmul kernels read (its loop takes 2 float16).
  if (cpu) variants.push_back({"read_chunked16", std::max(cu * 4, loop_items(n4 / 8) + 1), 1u});
  size_t max_items = 0;
  for (const auto& v : variants) max_items = std::max(max_items, v.global);
  ClMem out = dev.alloc(max_items * sizeof(float));
  double best = -1;
  for (const auto& v : variants) {
    ClKernel k = dev.kernel("probes", v.kernel);
    set_arg(dev, k.get(), 0, src.get());
    set_arg(dev, k.get(), 1, out.get());
    set_arg(dev, k.get(), 2, n4);
    const ProbeTiming t = time_kernel(dev, k.get(), v.global, v.local);
    // Every float of the buffer is 1: the items' sums add up to the float count.
    std::vector<float> sums(v.global);
    dev.read(out.get(), 0, sums.data(), sums.size() * sizeof(float));
    double total = 0;
    for (float x : sums) total += x;
    const bool ok = std::fabs(total - double(n4) * 4.0) < 0.5;
    const double gbps =
        trusted_rate(v.kernel, double(bytes), t, ok, res_s, bounds.read_gbps * 1e9, -1, r.note);
    spdlog::debug("{}: {} {:.1f} GB/s", info.id, v.kernel, gbps * 1e-9);
    if (gbps > best) {
      best = gbps;
      r.read_pattern = std::string(v.kernel).substr(5);
    }
  }
  if (best > 0) {
    r.read_gbps = best * 1e-9;
  } else {
    r.read_gbps = fallback.read_gbps;
    r.read_pattern = fallback.read_pattern;
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
    // Host-clock timings: the wall time is the device time here.
    const ProbeTiming th{median(h2d), median(h2d)}, td{median(d2h), median(d2h)};
    r.h2d_gbps = trusted_rate("h2d copy", double(copy_bytes), th, true, 1e-9,
                              bounds.copy_gbps * 1e9, fallback.h2d_gbps * 1e9, r.note) *
                 1e-9;
    r.d2h_gbps = trusted_rate("d2h copy", double(copy_bytes), td, true, 1e-9,
                              bounds.copy_gbps * 1e9, fallback.d2h_gbps * 1e9, r.note) *
                 1e-9;
  }

  // fp32 FMA throughput; a few items' outputs checked against the host's fma.
  {
    ClKernel k = dev.kernel("probes", "fma_throughput");
    const size_t global = cu * (cpu ? 16 : 2048);
    cl_uint iters = cpu ? 4096 : 8192;
    if (info.max_loop_iterations > 0)
      iters = cl_uint(std::min<uint64_t>(iters, info.max_loop_iterations));
    const float a = 0.999f, b = 0.001f;
    ClMem flops_out = dev.alloc(global * sizeof(float));
    set_arg(dev, k.get(), 0, flops_out.get());
    set_arg(dev, k.get(), 1, iters);
    set_arg(dev, k.get(), 2, a);
    set_arg(dev, k.get(), 3, b);
    // CPUs: one item per group, so every thread gets groups (see read_chunked above).
    const ProbeTiming t = time_kernel(dev, k.get(), global, cpu ? 1 : 0);
    std::vector<float> got(global);
    dev.read(flops_out.get(), 0, got.data(), got.size() * sizeof(float));
    bool ok = true;
    for (size_t gid : {size_t(0), global / 2, global - 1}) {
      const float want = fma_expected(uint32_t(gid), iters, a, b);
      ok = ok && std::fabs(got[gid] - want) <= 1e-3f * std::max(1.0f, std::fabs(want));
    }
    r.fp32_gflops = trusted_rate("fp32 fma", double(global) * iters * 64.0, t, ok, res_s,
                                 bounds.fp32_gflops * 1e9, fallback.fp32_gflops * 1e9, r.note) *
                    1e-9;
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
    if (!(r.launch_latency_us > 0)) {
      add_note(r.note, "launch latency not measurable, conservative figure");
      r.launch_latency_us = fallback.launch_latency_us;
    }
    // Back to back, as a replayed step launches: 64 launches then one wait, per launch. The
    // kernel spans compute units x 64 groups (one item each on CPUs, 64 on GPUs), as the decode
    // kernels' row groups do, since a CPU driver's cost grows with the groups it distributes.
    const size_t group = cpu ? 1 : std::min<size_t>(64, info.max_group_items());
    const size_t global = cu * 64 * group;
    constexpr int kLaunches = 64;
    std::vector<double> per_launch;
    for (int round = 0; round < 6; ++round) {
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kLaunches; ++i)
        CL_CHECK(clEnqueueNDRangeKernel(dev.queue(), k.get(), 1, nullptr, &global, &group, 0,
                                        nullptr, nullptr),
                 info.label());
      dev.finish();
      auto t1 = std::chrono::steady_clock::now();
      if (round > 0)
        per_launch.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() /
                             kLaunches);
    }
    r.launch_stream_us = median(per_launch);
    if (!(r.launch_stream_us > 0)) {
      add_note(r.note, "streamed launch cost not measurable, conservative figure");
      r.launch_stream_us = fallback.launch_stream_us;
    }
  }
  if (!r.note.empty()) spdlog::warn("probes on {}: {}", info.label(), r.note);
  return r;
}

namespace {
// Writes `value` to `path` (in `dir`, created) through a temporary file renamed over it, so a
// reader never sees half a file. Throws naming the file.
void write_json_atomically(const std::filesystem::path& dir, const std::filesystem::path& path,
                           const boost::json::value& value) {
  std::filesystem::create_directories(dir);
  const auto tmp = path.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp);
    out << boost::json::serialize(value) << "\n";
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, path);
}
}  // namespace

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
    r.launch_stream_us = v.at("launch_stream_us").to_number<double>();
    r.measured_at = v.at("measured_at").as_string().c_str();
    if (const auto* n = v.if_contains("note"); n && n->is_string()) r.note = n->as_string().c_str();
    const ProbeBounds b = probe_bounds(info);
    const std::pair<double, double> figures[] = {{r.read_gbps, b.read_gbps},
                                                 {r.h2d_gbps, b.copy_gbps},
                                                 {r.d2h_gbps, b.copy_gbps},
                                                 {r.fp32_gflops, b.fp32_gflops},
                                                 {r.launch_latency_us, 1e7},
                                                 {r.launch_stream_us, 1e7}};
    for (const auto& [value, bound] : figures) {
      if (!std::isfinite(value) || value <= 0 || value > bound) {
        spdlog::info("probe cache {}: implausible figure {}; re-measuring", path_for(info).string(),
                     value);
        return std::nullopt;
      }
    }
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
    o["launch_stream_us"] = r.launch_stream_us;
    o["measured_at"] = r.measured_at;
    o["note"] = r.note;
    write_json_atomically(dir_, path_for(info), o);
  } catch (const std::exception& e) {
    spdlog::warn("probe cache: could not store results: {}", e.what());
  }
}

std::filesystem::path ProbeCache::rates_path_for(const DeviceInfo& info) const {
  auto p = path_for(info);
  p.replace_extension(".rates.json");
  return p;
}

namespace {
// The rates file's object, or an empty one when absent or unreadable.
boost::json::object read_rates(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    auto v = boost::json::parse(ss.str());
    if (v.is_object()) return v.as_object();
  } catch (const std::exception& e) {
    spdlog::info("rate cache {}: unreadable ({}); re-measuring", path.string(), e.what());
  }
  return {};
}
}  // namespace

std::optional<double> ProbeCache::load_figure(const DeviceInfo& info, const std::string& key,
                                              double bound, const char* unit) const {
  if (dir_.empty()) return std::nullopt;
  const auto rates = read_rates(rates_path_for(info));
  const auto* v = rates.if_contains(key);
  if (!v || !v->is_number()) return std::nullopt;
  const double value = v->to_number<double>();
  if (!std::isfinite(value) || value <= 0 || value > bound) {
    spdlog::info("rate cache {}: implausible {} {} for {}; re-measuring",
                 rates_path_for(info).string(), value, unit, key);
    return std::nullopt;
  }
  return value;
}

void ProbeCache::store_figures(const DeviceInfo& info,
                               const std::map<std::string, double>& figures) const {
  if (dir_.empty() || figures.empty()) return;
  try {
    const auto path = rates_path_for(info);
    auto rates = read_rates(path);
    for (const auto& [key, value] : figures) rates[key] = value;
    write_json_atomically(dir_, path, rates);
  } catch (const std::exception& e) {
    spdlog::warn("rate cache: could not store {}: {}", figures.begin()->first, e.what());
  }
}

std::optional<double> ProbeCache::load_rate(const DeviceInfo& info, const std::string& key) const {
  return load_figure(info, key, probe_bounds(info).read_gbps, "GB/s");
}

void ProbeCache::store_rate(const DeviceInfo& info, const std::string& key, double gbps) const {
  store_figures(info, {{key, gbps}});
}

std::optional<double> ProbeCache::load_launch_us(const DeviceInfo& info,
                                                 const std::string& key) const {
  return load_figure(info, key, 1e7, "us");
}

void ProbeCache::store_launch_us(const DeviceInfo& info, const std::string& key, double us) const {
  store_figures(info, {{key, us}});
}

void ProbeCache::store_launch_us(const DeviceInfo& info,
                                 const std::map<std::string, double>& figures) const {
  store_figures(info, figures);
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
