// Measured device facts the cost model uses (not datasheets): streaming read bandwidth,
// host<->device copy bandwidth, fp32 throughput and kernel launch latency; cached on disk per
// device + driver.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "devices/device.h"

namespace tessera {

struct ProbeResult {
  double read_gbps = 0;          // streaming read, best access pattern for the device (GB/s, 1e9)
  std::string read_pattern;      // which pattern won: "coalesced" or "chunked"
  double h2d_gbps = 0;           // host -> device copy (clEnqueueWriteBuffer, blocking)
  double d2h_gbps = 0;           // device -> host copy
  double fp32_gflops = 0;        // FMA throughput
  double launch_latency_us = 0;  // enqueue + finish of an empty kernel, median
  std::string measured_at;       // ISO-8601 UTC
};

// Runs every probe on `device` (about a second per device). Timings are medians of repeated runs,
// kernel times from OpenCL profiling events.
ProbeResult measure_device(const Device& device);

// Disk cache of probe results: one JSON file per (device name, driver version, platform version).
class ProbeCache {
 public:
  explicit ProbeCache(std::filesystem::path dir);  // empty: no caching

  std::optional<ProbeResult> load(
      const DeviceInfo& info) const;  // nullopt when absent or unreadable
  void store(const DeviceInfo& info, const ProbeResult& result) const;

  // The cached result, or a fresh measurement (stored) when absent or `remeasure` is set.
  ProbeResult get(const Device& device, bool remeasure) const;

 private:
  std::filesystem::path path_for(const DeviceInfo& info) const;
  std::filesystem::path dir_;
};

}  // namespace tessera
