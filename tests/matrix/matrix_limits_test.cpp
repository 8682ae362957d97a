// Every kernel on a device whose limits are forced tiny (DeviceLimits via Device::with_limits):
// each case adapts (correct result) or is reported unsupported with the limit it needs, never a
// failure or a partial result.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "devices/device.h"
#include "host/cli/settings.h"
#include "host/ops/device/matrix.h"

namespace tessera::ops {
namespace {

const DeviceRegistry& registry() {
  static const DeviceRegistry r = tessera::cli::discover_devices();
  return r;
}

// The first case of every kernel, and the add that needs a split launch under a small global size.
std::vector<MatrixCase> sample_cases() {
  std::vector<MatrixCase> out;
  std::set<std::string> kernels;
  for (auto& c : all_matrix_cases()) {
    const bool first = kernels.insert(c.kernel).second;
    if (first || c.name() == "add/f32/4194307") out.push_back(std::move(c));
  }
  return out;
}

struct Outcome {
  std::map<std::string, std::string> status;  // case name -> status
  int pass = 0, unsupported = 0;
};

Outcome run_all(const Device& device, const std::vector<MatrixCase>& cases) {
  Outcome o;
  for (const auto& c : cases) {
    const MatrixCaseResult r = run_matrix_case(c, device, false);
    o.status[c.name()] = r.status;
    EXPECT_TRUE(r.status == "pass" || r.status == "unsupported")
        << c.name() << " on " << device.info().label() << " with limits: " << r.status << ": "
        << r.note;
    if (r.status == "unsupported") {
      ++o.unsupported;
      EXPECT_FALSE(r.note.empty()) << c.name() << ": an unsupported verdict must say why";
    } else if (r.status == "pass") {
      ++o.pass;
    }
  }
  return o;
}

TEST(MatrixLimits, TinyLocalMemory) {
  const auto cases = sample_cases();
  {
    const auto& d = registry().devices().front();
    DeviceLimits l;
    l.local_mem_bytes = 4096;
    const auto small = d->with_limits(l);
    ASSERT_EQ(small->info().local_mem_bytes, std::min<uint64_t>(4096, d->info().local_mem_bytes));
    const Outcome o = run_all(*small, cases);
    // Attention's tiles shrink to the local memory: its cases still run.
    int attention_pass = 0;
    for (const auto& [name, status] : o.status)
      attention_pass += name.find("attention") != std::string::npos && status == "pass";
    EXPECT_GT(attention_pass, 0) << "no attention case adapted to 4 KiB of local memory";
    EXPECT_GT(o.pass, o.unsupported);
  }
}

TEST(MatrixLimits, TinyGlobalSizeAndLoopLimit) {
  const auto cases = sample_cases();
  {
    const auto& d = registry().devices().front();
    DeviceLimits l;
    l.max_global_items = 256;
    l.max_loop_iterations = 64;
    const auto small = d->with_limits(l);
    const Outcome o = run_all(*small, cases);
    // The element-wise add splits into launches of at most 256 items x 64 iterations.
    EXPECT_EQ(o.status.at("add/f32/4194307"), "pass");
    EXPECT_GT(o.pass, 0);
  }
}

TEST(MatrixLimits, SmallWorkGroups) {
  const auto cases = sample_cases();
  {
    const auto& d = registry().devices().front();
    DeviceLimits l;
    l.max_work_group_size = 4;
    const Outcome o = run_all(*d->with_limits(l), cases);
    EXPECT_GT(o.pass, 0);
  }
}

}  // namespace
}  // namespace tessera::ops
