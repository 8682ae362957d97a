// Probes run and produce plausible (positive, finite) figures; their cache round-trips and
// recovers from damage. No assertion on speed: machines are shared and noisy.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "devices/probes.h"
#include "host/cli/settings.h"
#include "test_util.h"

namespace tessera {
namespace {

TEST(ProbesTest, MeasureAndCache) {
  test::TempDir dir;
  auto reg = tessera::cli::discover_devices();
  const Device& d = *reg.devices().front();
  ProbeCache cache(dir.path());
  EXPECT_FALSE(cache.load(d.info()).has_value());
  ProbeResult r = cache.get(d, false);
  for (double v : {r.read_gbps, r.h2d_gbps, r.d2h_gbps, r.fp32_gflops, r.launch_latency_us,
                   r.launch_stream_us}) {
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_GT(v, 0.0);
  }
  EXPECT_FALSE(r.read_pattern.empty());
  auto loaded = cache.load(d.info());
  ASSERT_TRUE(loaded.has_value());
  EXPECT_DOUBLE_EQ(loaded->read_gbps, r.read_gbps);
  EXPECT_DOUBLE_EQ(loaded->launch_stream_us, r.launch_stream_us);
  EXPECT_EQ(loaded->measured_at, r.measured_at);

  // A damaged cache file is ignored (and re-measured by get()).
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    std::ofstream(e.path()) << "{not json";
  }
  EXPECT_FALSE(cache.load(d.info()).has_value());
  EXPECT_GT(cache.get(d, false).read_gbps, 0.0);
  EXPECT_TRUE(cache.load(d.info()).has_value());
}

// The engine's measured rates (the planner's weight streaming rate) beside the probes: keyed,
// several per device, and an implausible or damaged entry is not believed.
TEST(ProbesTest, RatesRoundTripAndRejectImplausibleFigures) {
  test::TempDir dir;
  auto reg = tessera::cli::discover_devices();
  const DeviceInfo& info = reg.devices().front()->info();
  ProbeCache cache(dir.path());
  EXPECT_FALSE(cache.load_rate(info, "weights|Q4_0|1024").has_value());
  cache.store_rate(info, "weights|Q4_0|1024", 6.25);
  cache.store_rate(info, "weights|Q8_0|1024", 12.5);
  ASSERT_TRUE(cache.load_rate(info, "weights|Q4_0|1024").has_value());
  EXPECT_DOUBLE_EQ(*cache.load_rate(info, "weights|Q4_0|1024"), 6.25);
  EXPECT_DOUBLE_EQ(*cache.load_rate(info, "weights|Q8_0|1024"), 12.5);
  EXPECT_FALSE(cache.load_rate(info, "weights|Q6_K|1024").has_value());
  // The probes' own file is untouched by rates (and the other way round).
  EXPECT_FALSE(cache.load(info).has_value());
  cache.store_rate(info, "weights|Q4_0|1024", -3);
  EXPECT_FALSE(cache.load_rate(info, "weights|Q4_0|1024").has_value());
  cache.store_rate(info, "weights|Q4_0|1024", probe_bounds(info).read_gbps * 10);
  EXPECT_FALSE(cache.load_rate(info, "weights|Q4_0|1024").has_value());
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    std::ofstream(e.path()) << "[1, 2";
  EXPECT_FALSE(cache.load_rate(info, "weights|Q8_0|1024").has_value());
  cache.store_rate(info, "weights|Q8_0|1024", 11.0);  // a damaged file is replaced
  EXPECT_DOUBLE_EQ(*cache.load_rate(info, "weights|Q8_0|1024"), 11.0);
  // No directory: nothing is kept.
  ProbeCache none{std::filesystem::path()};
  none.store_rate(info, "weights|Q4_0|1024", 6.25);
  EXPECT_FALSE(none.load_rate(info, "weights|Q4_0|1024").has_value());
}

}  // namespace
}  // namespace tessera
