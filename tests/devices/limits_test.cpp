// Device-limit overrides (the test hook for small devices) and the probes' self-validation: figures
// no device can reach are replaced (host clock, then a conservative figure) and cached ones
// refused.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "devices/probes.h"
#include "host/cli/settings.h"
#include "test_util.h"

namespace tessera {
namespace {

TEST(DeviceLimits, ParseAndApplyOnlyLowers) {
  const DeviceLimits l = parse_device_limits("local_mem=4096,work_group=16,global=1024,loop=100");
  EXPECT_EQ(l.local_mem_bytes, 4096u);
  EXPECT_EQ(l.max_work_group_size, 16u);
  EXPECT_EQ(l.max_global_items, 1024u);
  EXPECT_EQ(l.max_loop_iterations, 100u);
  EXPECT_EQ(l.max_alloc_bytes, 0u);
  EXPECT_FALSE(l.own_context);
  EXPECT_TRUE(parse_device_limits("own_context=1").own_context);
  DeviceInfo info;
  info.local_mem_bytes = 2048;  // already below: kept
  info.max_work_group_size = 1024;
  info.max_work_item_sizes[0] = info.max_work_item_sizes[1] = info.max_work_item_sizes[2] = 1024;
  info.max_alloc_bytes = 1 << 30;
  apply_limits(info, l);
  EXPECT_EQ(info.local_mem_bytes, 2048u);
  EXPECT_EQ(info.max_work_group_size, 16u);
  EXPECT_EQ(info.max_work_item_sizes[1], 16u);
  EXPECT_EQ(info.max_group_items(), 16u);
  EXPECT_EQ(info.max_global_items, 1024u);
  EXPECT_EQ(info.max_loop_iterations, 100u);
  EXPECT_EQ(info.max_alloc_bytes, uint64_t(1) << 30);
}

TEST(DeviceLimits, BadSpecsNameTheProblem) {
  for (const char* bad : {"local_mem", "local_mem=", "local_mem=0", "local_mem=12k", "global=-1"}) {
    try {
      parse_device_limits(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const TesseraError& e) {
      EXPECT_NE(std::string(e.what()).find("positive integer"), std::string::npos) << e.what();
    }
  }
  try {
    parse_device_limits("local_memory=10");
    ADD_FAILURE() << "unknown key accepted";
  } catch (const TesseraError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown key 'local_memory'"), std::string::npos);
  }
}

TEST(DeviceLimits, EnvironmentLowersDiscoveredDevices) {
  const auto r = test::run_command("TESSERA_DEVICE_LIMITS=local_mem=1234 " +
                                   std::string(TESSERA_BIN) + " devices --json --no-measure");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1234"), std::string::npos) << r.output;
  const auto bad = test::run_command("TESSERA_DEVICE_LIMITS=bogus=1 " + std::string(TESSERA_BIN) +
                                     " devices --json --no-measure");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("TESSERA_DEVICE_LIMITS"), std::string::npos) << bad.output;
}

DeviceInfo cpu_info() {
  DeviceInfo info;
  info.type = DeviceType::kCpu;
  info.compute_units = 8;
  info.max_clock_mhz = 300;  // what llvmpipe reports
  info.native_vector_width_float = 8;
  return info;
}

TEST(ProbeValidation, BoundsComeFromTheDevice) {
  const ProbeBounds b = probe_bounds(cpu_info());
  // 8 cores at >= 3 GHz: 1 TB/s at most, 8 * 2 * 16 lanes * 2 * 3 GHz = 1536 GFLOP/s.
  EXPECT_DOUBLE_EQ(b.read_gbps, 1000.0);
  EXPECT_DOUBLE_EQ(b.fp32_gflops, 1536.0);
  // The figures the issue saw on llvmpipe are far above.
  EXPECT_GT(268435456.0, b.read_gbps);
  EXPECT_GT(33554432.0, b.fp32_gflops);
}

TEST(ProbeValidation, TrustedRateReplacesImpossibleFigures) {
  const double bytes = 256.0 * 1048576, bound = 1000e9, fallback = 5e9;
  std::string note;
  // A sane profiled time is believed.
  EXPECT_DOUBLE_EQ(trusted_rate("read", bytes, {0.02, 0.021}, true, 1e-9, bound, fallback, note),
                   bytes / 0.02);
  EXPECT_TRUE(note.empty()) << note;
  // A profiling timer that reports 1 ns (the llvmpipe case): the host clock decides.
  EXPECT_DOUBLE_EQ(trusted_rate("read", bytes, {1e-9, 0.05}, true, 1e-9, bound, fallback, note),
                   bytes / 0.05);
  EXPECT_NE(note.find("host clock used"), std::string::npos) << note;
  // 68 us on a 1 us timer (the H200's streaming read, ~3.9 TB/s) is believed.
  note.clear();
  EXPECT_DOUBLE_EQ(
      trusted_rate("read", bytes, {68e-6, 80e-6}, true, 1e-6, 20000e9, fallback, note),
      bytes / 68e-6);
  EXPECT_TRUE(note.empty()) << note;
  // A time below 20 ticks of a coarse timer is not trusted.
  note.clear();
  EXPECT_DOUBLE_EQ(trusted_rate("read", bytes, {5e-6, 0.05}, true, 1e-6, 1e18, fallback, note),
                   bytes / 0.05);
  EXPECT_FALSE(note.empty());
  // Both clocks impossible: the conservative figure.
  note.clear();
  EXPECT_DOUBLE_EQ(trusted_rate("read", bytes, {1e-9, 1e-8}, true, 1e-9, bound, fallback, note),
                   fallback);
  EXPECT_NE(note.find("conservative"), std::string::npos) << note;
  // A kernel whose output is wrong did not do the work: conservative, whatever the time.
  note.clear();
  EXPECT_DOUBLE_EQ(trusted_rate("read", bytes, {0.02, 0.021}, false, 1e-9, bound, fallback, note),
                   fallback);
  EXPECT_NE(note.find("output wrong"), std::string::npos) << note;
  // Device time far beyond the host's wall time is an artefact too.
  note.clear();
  EXPECT_DOUBLE_EQ(trusted_rate("read", bytes, {5.0, 0.05}, true, 1e-9, bound, fallback, note),
                   bytes / 0.05);
}

TEST(ProbeValidation, MeasuredFiguresAreWithinBounds) {
  auto reg = tessera::cli::discover_devices();
  const Device& d = *reg.devices().front();
  const ProbeResult r = measure_device(d);
  const ProbeBounds b = probe_bounds(d.info());
  EXPECT_GT(r.read_gbps, 0);
  EXPECT_LE(r.read_gbps, b.read_gbps);
  EXPECT_GT(r.fp32_gflops, 0);
  EXPECT_LE(r.fp32_gflops, b.fp32_gflops);
  EXPECT_LE(r.h2d_gbps, b.copy_gbps);
  EXPECT_GT(r.launch_latency_us, 0);
}

TEST(ProbeValidation, ImplausibleCachedFiguresAreRemeasured) {
  test::TempDir dir;
  auto reg = tessera::cli::discover_devices();
  const Device& d = *reg.devices().front();
  ProbeCache cache(dir.path());
  ProbeResult good = conservative_probe(d.info());
  good.measured_at = "2026-01-01T00:00:00Z";
  cache.store(d.info(), good);
  ASSERT_TRUE(cache.load(d.info()).has_value());
  for (double bad : {1e308, -1.0, 0.0}) {
    ProbeResult r = good;
    r.read_gbps = bad;
    cache.store(d.info(), r);
    EXPECT_FALSE(cache.load(d.info()).has_value()) << bad;
    r = good;
    r.fp32_gflops = bad;
    cache.store(d.info(), r);
    EXPECT_FALSE(cache.load(d.info()).has_value()) << bad;
  }
}

}  // namespace
}  // namespace tessera
