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

}  // namespace
}  // namespace tessera
