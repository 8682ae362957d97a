// No OpenCL platform (the ICD loader sees an empty vendor directory): a clear message, no crash.
#include <gtest/gtest.h>

#include "devices/device.h"
#include "host/cli/settings.h"
#include "test_util.h"

namespace tessera {
namespace {

TEST(NoPlatformTest, DiscoverSaysHowToInstallOne) {
  try {
    tessera::cli::discover_devices();
    FAIL() << "expected NoOpenClError";
  } catch (const NoOpenClError& e) {
    EXPECT_NE(std::string(e.what()).find("pocl-opencl-icd"), std::string::npos) << e.what();
  }
}

TEST(NoPlatformTest, CommandFailsCleanly) {
  auto r = test::run_command(std::string(TESSERA_BIN) + " devices");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no OpenCL platform"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace tessera
