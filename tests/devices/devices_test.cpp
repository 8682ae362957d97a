// Discovery on the machine's OpenCL devices (PoCL in CI) and OpenCL error naming.
#include <gtest/gtest.h>

#include <set>

#include "devices/device.h"
#include "host/cli/settings.h"
#include "test_util.h"

namespace tessera {
namespace {

TEST(ClErrorTest, NamesCodes) {
  EXPECT_EQ(cl_error_name(CL_OUT_OF_RESOURCES), "CL_OUT_OF_RESOURCES");
  EXPECT_EQ(cl_error_name(-5), "CL_OUT_OF_RESOURCES");
  EXPECT_EQ(cl_error_name(CL_BUILD_PROGRAM_FAILURE), "CL_BUILD_PROGRAM_FAILURE");
  EXPECT_EQ(cl_error_name(CL_INVALID_KERNEL_NAME), "CL_INVALID_KERNEL_NAME");
  EXPECT_EQ(cl_error_name(-1001), "CL_PLATFORM_NOT_FOUND_KHR");
  EXPECT_EQ(cl_error_name(-12345), "CL_UNKNOWN_ERROR(-12345)");
}

TEST(ClErrorTest, MessageNamesCallDeviceAndError) {
  ClError e("clFinish(queue)", CL_OUT_OF_RESOURCES, "gpu0 (Test GPU)");
  const std::string msg = e.what();
  EXPECT_NE(msg.find("clFinish(queue)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gpu0 (Test GPU)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CL_OUT_OF_RESOURCES"), std::string::npos) << msg;
  EXPECT_EQ(e.code(), CL_OUT_OF_RESOURCES);
}

TEST(ClErrorTest, CheckMacroThrowsOnlyOnFailure) {
  EXPECT_NO_THROW(CL_CHECK(CL_SUCCESS, "cpu0"));
  EXPECT_THROW(CL_CHECK(CL_INVALID_VALUE, "cpu0"), ClError);
}

TEST(ClErrorTest, RealFailingCallIsNamed) {
  auto reg = tessera::cli::discover_devices();
  const Device& d = *reg.devices().front();
  try {
    d.kernel("probes", "no_such_kernel");
    FAIL() << "expected ClError";
  } catch (const ClError& e) {
    EXPECT_EQ(e.code(), CL_INVALID_KERNEL_NAME);
    EXPECT_NE(std::string(e.what()).find("no_such_kernel"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(d.id()), std::string::npos);
  }
}

TEST(DiscoveryTest, FindsDevicesWithCapabilities) {
  auto reg = tessera::cli::discover_devices();
  ASSERT_FALSE(reg.devices().empty());
  std::set<std::string> ids;
  for (const auto& d : reg.devices()) {
    const auto& i = d->info();
    EXPECT_TRUE(ids.insert(i.id).second) << "duplicate id " << i.id;
    EXPECT_FALSE(i.name.empty());
    EXPECT_FALSE(i.driver_version.empty());
    EXPECT_FALSE(i.opencl_c_version.empty());
    EXPECT_GT(i.global_mem_bytes, 0u);
    EXPECT_GT(i.max_alloc_bytes, 0u);
    EXPECT_GT(i.compute_units, 0u);
    EXPECT_GT(i.max_work_group_size, 0u);
    EXPECT_EQ(&reg.get(i.id), d.get());
    EXPECT_EQ(&reg.get(std::to_string(i.platform_index) + ":" + std::to_string(i.device_index)),
              d.get());
  }
}

TEST(DiscoveryTest, PoclCpuDeviceIsClassified) {
  auto reg = tessera::cli::discover_devices();
  bool found = false;
  for (const auto& d : reg.devices()) {
    if (d->info().platform_name.find("Portable Computing Language") == std::string::npos) continue;
    found = true;
    EXPECT_EQ(d->info().vendor_class, VendorClass::kPocl);
    if (d->info().type == DeviceType::kCpu) {
      EXPECT_EQ(d->id().rfind("cpu", 0), 0u);
      EXPECT_TRUE(d->info().caps.unified_memory);
    }
  }
  if (!found) GTEST_SKIP() << "no PoCL platform on this machine";
}

TEST(DiscoveryTest, UnknownIdListsTheDevices) {
  auto reg = tessera::cli::discover_devices();
  try {
    reg.get("gpu99");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("gpu99"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(reg.devices().front()->id()), std::string::npos);
  }
}

TEST(DiscoveryTest, VendorClassification) {
  EXPECT_EQ(classify_vendor("NVIDIA Corporation", "NVIDIA CUDA"), VendorClass::kNvidia);
  EXPECT_EQ(classify_vendor("Advanced Micro Devices, Inc.", "AMD Accelerated Parallel Processing"),
            VendorClass::kAmd);
  EXPECT_EQ(classify_vendor("Intel(R) Corporation", "Intel(R) OpenCL Graphics"),
            VendorClass::kIntel);
  EXPECT_EQ(classify_vendor("GenuineIntel", "Portable Computing Language"), VendorClass::kPocl);
  EXPECT_EQ(classify_vendor("Some New Vendor", "Their Platform"), VendorClass::kGeneric);
}

TEST(DeviceTest, BufferRoundTrip) {
  auto reg = tessera::cli::discover_devices();
  for (const auto& d : reg.devices()) {
    std::vector<int> in(1000), out(1000, 0);
    for (int i = 0; i < 1000; ++i) in[size_t(i)] = i * 7 - 3;
    ClMem buf = d->alloc(in.size() * sizeof(int));
    d->write(buf.get(), 0, in.data(), in.size() * sizeof(int));
    d->read(buf.get(), 0, out.data(), out.size() * sizeof(int));
    EXPECT_EQ(in, out) << d->id();
  }
}

TEST(DeviceTest, HugeAllocationIsANamedError) {
  auto reg = tessera::cli::discover_devices();
  for (const auto& dev : reg.devices()) {
    const Device& d = *dev;
    ASSERT_GT(d.info().max_alloc_bytes, 0u) << d.id();
    // One byte over the device's largest allocation: refused on every driver, before any use.
    const size_t bytes = size_t(d.info().max_alloc_bytes) + 1;
    try {
      ClMem m = d.alloc(bytes);
      ADD_FAILURE() << d.id() << ": " << bytes << " bytes allocated past max_alloc_bytes";
    } catch (const ClError& e) {
      EXPECT_EQ(e.code(), CL_INVALID_BUFFER_SIZE);
      EXPECT_NE(std::string(e.what()).find("clCreateBuffer(" + std::to_string(bytes) + " bytes)"),
                std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find(d.id()), std::string::npos) << e.what();
    }
  }
}

TEST(DevicesCommandTest, JsonListsTheCpuDevice) {
  auto r = test::run_command(std::string(TESSERA_BIN) + " devices --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"type\":\"cpu\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"read_gbps\""), std::string::npos) << r.output;
}

TEST(DevicesCommandTest, TableHasHeaderAndDevice) {
  auto r = test::run_command(std::string(TESSERA_BIN) + " devices");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("read GB/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("cpu0"), std::string::npos) << r.output;
}

TEST(DevicesCommandTest, BadOptionIsAnError) {
  auto r = test::run_command(std::string(TESSERA_BIN) + " devices --no-such-option");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no-such-option"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace tessera
