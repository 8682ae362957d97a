// Two PoCL devices (POCL_DEVICES="pthread pthread", set by CTest): both discovered, both usable.
#include <gtest/gtest.h>

#include "devices/device.h"
#include "host/cli/settings.h"
#include "test_util.h"

namespace tessera {
namespace {

TEST(TwoDevicesTest, BothCpuDevicesWork) {
  auto reg = tessera::cli::discover_devices();
  int cpus = 0;
  for (const auto& d : reg.devices()) {
    if (d->info().platform_name.find("Portable Computing Language") == std::string::npos) continue;
    ++cpus;
    std::vector<float> in(256, 1.5f), out(256);
    ClMem b = d->alloc(in.size() * 4);
    d->write(b.get(), 0, in.data(), in.size() * 4);
    d->read(b.get(), 0, out.data(), out.size() * 4);
    EXPECT_EQ(in, out);
    d->program("probes");  // builds for each device
  }
  EXPECT_EQ(cpus, 2) << "POCL_DEVICES=\"pthread pthread\" should expose two PoCL devices";
  EXPECT_NO_THROW(reg.get("cpu0"));
  EXPECT_NO_THROW(reg.get("cpu1"));
}

TEST(TwoDevicesTest, CommandListsTwoCpuDevices) {
  auto r = test::run_command(std::string(TESSERA_BIN) + " devices --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"id\":\"cpu0\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"id\":\"cpu1\""), std::string::npos) << r.output;
}

}  // namespace
}  // namespace tessera
