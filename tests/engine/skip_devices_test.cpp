// skip_unbuildable_devices: a device whose OpenCL compiler cannot build the engine's programs is
// left out of the selection (with a warning), unless the config names it; buildable devices stay.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "host/cli/settings.h"
#include "host/engine/planning.h"
#include "tests/devices/test_util.h"

namespace tessera::engine {
namespace {

// A kernel directory whose norm program does not compile (every other file as shipped).
std::shared_ptr<ProgramCache> broken_norm_programs(const std::filesystem::path& dir) {
  for (const auto& e : std::filesystem::directory_iterator(
           std::filesystem::path(TESSERA_SOURCE_DIR) / "cl_kernels"))
    std::filesystem::copy_file(e.path(), dir / e.path().filename());
  std::ofstream(dir / "norm.cl") << "__kernel void rms_norm_f32(__global float* x) { x[0] = ; }\n";
  return std::make_shared<ProgramCache>(KernelSources::from_directory(dir),
                                        std::filesystem::path());
}

TEST(SkipUnbuildableDevices, BuildableDevicesStay) {
  const auto reg = tessera::cli::discover_devices();
  sched::Config config;
  skip_unbuildable_devices(reg, config);
  EXPECT_TRUE(config.exclude.empty());
}

TEST(SkipUnbuildableDevices, UnbuildableDeviceIsLeftOutUnlessNamed) {
  test::TempDir dir;
  const auto reg = DeviceRegistry::discover(broken_norm_programs(dir.path()));
  sched::Config config;
  skip_unbuildable_devices(reg, config);
  ASSERT_EQ(config.exclude.size(), reg.devices().size());
  for (size_t i = 0; i < reg.devices().size(); ++i)
    EXPECT_EQ(config.exclude[i].id.value_or(""), reg.devices()[i]->id());

  // Named by id: kept, so the build error surfaces when the engine builds.
  sched::Config named;
  sched::DeviceSelector s;
  s.id = reg.devices().front()->id();
  named.select.push_back(s);
  skip_unbuildable_devices(reg, named);
  EXPECT_TRUE(named.exclude.empty());
}

}  // namespace
}  // namespace tessera::engine
