// Measured device facts the cost model uses (not datasheets): streaming read bandwidth,
// host<->device copy bandwidth, fp32 throughput and kernel launch latency; cached on disk per
// device + driver.
#pragma once

#include <filesystem>
#include <map>
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
  // What one launch costs in a stream of back-to-back launches with no host wait between them
  // (a replayed step): an empty kernel over compute units x 64 work groups, total / launches,
  // median of rounds. On GPUs it is the host's enqueue cost; on CPU drivers the fork/join.
  double launch_stream_us = 0;
  std::string measured_at;       // ISO-8601 UTC
  std::string note;              // what was not trusted and replaced (empty: every figure measured)
};

// Upper bounds no real device of this kind reaches: figures above them are timer artefacts or a
// kernel that did not run. From the device's reported compute units, clock and vector width, with
// generous margins (drivers under-report clocks: llvmpipe says 300 MHz).
struct ProbeBounds {
  double read_gbps = 0;
  double fp32_gflops = 0;
  double copy_gbps = 0;
};
ProbeBounds probe_bounds(const DeviceInfo& info);

// Conservative figures used, with a warning, when a probe cannot be trusted.
ProbeResult conservative_probe(const DeviceInfo& info);

// One probe's timing: `amount` (bytes or flops) per launch; device_s from profiling events, wall_s
// from the host clock over back-to-back launches (an upper bound on the device time).
struct ProbeTiming {
  double device_s = 0;
  double wall_s = 0;
};
// The rate to believe: amount / device time when the output was right, the time is well above the
// timer resolution, within the wall time and the rate under `bound`; else amount / wall time when
// that is under `bound`; else `fallback`. Appends to `note` why a figure was replaced.
double trusted_rate(const std::string& what, double amount, const ProbeTiming& t, bool output_ok,
                    double timer_resolution_s, double bound, double fallback, std::string& note);

// Runs every probe on `device` (about a second per device). Each probe checks its kernel's output,
// repeats until its time is far above the timer resolution and is judged by trusted_rate against
// probe_bounds; replaced figures are logged as warnings and named in ProbeResult::note.
ProbeResult measure_device(const Device& device);

// Disk cache of probe results: one JSON file per (device name, driver version, platform version).
class ProbeCache {
 public:
  explicit ProbeCache(std::filesystem::path dir);  // empty: no caching

  // nullopt when absent, unreadable or implausible (a figure non-finite, <= 0 or over
  // probe_bounds): such an entry is re-measured.
  std::optional<ProbeResult> load(const DeviceInfo& info) const;
  void store(const DeviceInfo& info, const ProbeResult& result) const;

  // The cached result, or a fresh measurement (stored) when absent or `remeasure` is set.
  ProbeResult get(const Device& device, bool remeasure) const;

  // Rates the engine measures with its own kernels (the planner's weight streaming rate), in GB/s,
  // by a key naming what they depend on (the caller's: format, shape, kernel source hash), in a
  // file of their own beside the device's probes. load_rate: nullopt when absent, unreadable or
  // implausible (non-finite, <= 0 or over probe_bounds' read bound).
  std::optional<double> load_rate(const DeviceInfo& info, const std::string& key) const;
  void store_rate(const DeviceInfo& info, const std::string& key, double gbps) const;
  // The same file keeps what a launch of the engine's decode step costs there (microseconds, the
  // engine's launch-price calibration: OpenClModel), by a key of the same kind. load_launch_us:
  // nullopt when absent, unreadable or implausible (non-finite, <= 0 or over 10 s).
  std::optional<double> load_launch_us(const DeviceInfo& info, const std::string& key) const;
  void store_launch_us(const DeviceInfo& info, const std::string& key, double us) const;
  // Several figures at once (one write of the file), as store_launch_us stores each.
  void store_launch_us(const DeviceInfo& info, const std::map<std::string, double>& figures) const;

 private:
  std::filesystem::path path_for(const DeviceInfo& info) const;
  std::filesystem::path rates_path_for(const DeviceInfo& info) const;
  std::optional<double> load_figure(const DeviceInfo& info, const std::string& key, double bound,
                                    const char* unit) const;
  void store_figures(const DeviceInfo& info, const std::map<std::string, double>& figures) const;
  std::filesystem::path dir_;
};

}  // namespace tessera
