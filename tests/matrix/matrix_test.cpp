// The portability matrix as tests: one test per kernel, each running all of that kernel's cases
// (formats x shapes) on every OpenCL device found; a failure names the case, device and reason.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <set>
#include <sstream>

#include "devices/device.h"
#include "host/cli/settings.h"
#include "host/ops/device/matrix.h"
#include "tests/devices/test_util.h"

namespace tessera::ops {
namespace {

const std::vector<MatrixCase>& cases() {
  static const std::vector<MatrixCase> all = all_matrix_cases();
  return all;
}

std::vector<std::string> kernel_names() {
  std::set<std::string> names;
  for (const auto& c : cases()) names.insert(c.kernel);
  return {names.begin(), names.end()};
}

const DeviceRegistry& registry() {
  static const DeviceRegistry r = tessera::cli::discover_devices();
  return r;
}

class Matrix : public testing::TestWithParam<std::string> {};

TEST_P(Matrix, AllCasesOnAllDevices) {
  ASSERT_FALSE(registry().devices().empty());
  int ran = 0;  // cases that ran and were compared (not "unsupported")
  for (const auto& d : registry().devices()) {
    for (const auto& c : cases()) {
      if (c.kernel != GetParam()) continue;
      const MatrixCaseResult r = run_matrix_case(c, *d, false);
      if (r.status != "unsupported") ++ran;
      EXPECT_NE(r.status, "fail") << c.name() << " on " << d->info().label() << ": " << r.note
                                  << " (max_rel " << r.max_rel_err << ")";
      if (r.status == "unsupported")
        std::printf("unsupported: %s on %s: %s\n", c.name().c_str(), d->id().c_str(),
                    r.note.c_str());
    }
  }
  EXPECT_GT(ran, 0) << "no case of " << GetParam() << " ran on any device";
}

INSTANTIATE_TEST_SUITE_P(Kernels, Matrix, testing::ValuesIn(kernel_names()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// The framework itself must catch what it promises to catch.
TEST(MatrixFramework, FamiliesAreRegistered) {
  EXPECT_FALSE(matrix_families().empty());
  EXPECT_FALSE(cases().empty());
  std::set<std::string> names;
  for (const auto& c : cases())
    EXPECT_TRUE(names.insert(c.name()).second) << "duplicate case " << c.name();
}

TEST(MatrixFramework, GuardCatchesOutOfBoundsWrite) {
  const Device& d = *registry().devices().front();
  GuardedBuffer b(d, 64);
  EXPECT_EQ(b.check_guard(), "");
  const float v = 1.0f;
  d.write(b.mem(), 64 + 8, &v, sizeof(v));
  EXPECT_NE(b.check_guard().find("out-of-bounds"), std::string::npos);
}

TEST(MatrixFramework, UnwrittenOutputIsNaN) {
  const Device& d = *registry().devices().front();
  GuardedBuffer b(d, 16);
  const auto got = b.download<float>();
  const std::vector<float> ref(4, 1.0f);
  const MatrixCaseResult r = judge(compare(got, ref), 1e-3, {b.check_guard()});
  EXPECT_EQ(r.status, "fail");
  EXPECT_NE(r.note.find("NaN"), std::string::npos);
}

TEST(MatrixFramework, ToleranceDecides) {
  const std::vector<float> ref = {1.0f, -2.0f, 4.0f};
  const std::vector<float> close = {1.0f, -2.0f, 4.0001f};
  const std::vector<float> far = {1.0f, -2.1f, 4.0f};
  EXPECT_EQ(judge(compare(close, ref), 1e-4, {}).status, "pass");
  const MatrixCaseResult bad = judge(compare(far, ref), 1e-4, {});
  EXPECT_EQ(bad.status, "fail");
  EXPECT_NEAR(bad.max_rel_err, 0.1 / 4.0, 1e-6);
}

TEST(MatrixFramework, TooLargeIsUnsupportedNotFailed) {
  const Device& d = *registry().devices().front();
  const MatrixCase huge{"huge", "f32", "max_alloc", [](const Device& dev, bool) {
                          GuardedBuffer b(dev, size_t(dev.info().max_alloc_bytes));
                          return MatrixCaseResult{};
                        }};
  const MatrixCaseResult r = run_matrix_case(huge, d, false);
  EXPECT_EQ(r.status, "unsupported") << r.note;
}

// The command: exit code, JSON shape, filter errors.
TEST(MatrixCommand, JsonForOneKernelAndBadFilter) {
  const auto ok =
      test::run_command(std::string(TESSERA_BIN) + " matrix --json --filter rms_norm/f32/3x17");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  const auto root = boost::json::parse(ok.output.substr(ok.output.find('{')));
  const auto& results = root.at("results").as_array();
  ASSERT_EQ(results.size(), registry().devices().size());
  for (const auto& r : results) EXPECT_EQ(r.at("status").as_string(), "pass");
  const auto bad = test::run_command(std::string(TESSERA_BIN) + " matrix --filter no-such-kernel");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("no case matches"), std::string::npos) << bad.output;
}

// --progress: one line per case and device on stderr as each result arrives (a run cut off by a
// timeout keeps them), with the case's name and status; the table still follows.
TEST(MatrixCommand, ProgressPrintsEachRowAsItFinishes) {
  const std::string filter = "rms_norm/f32/";
  const auto r = test::run_command(std::string(TESSERA_BIN) + " matrix --progress --filter " +
                                   filter + " --devices cpu0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto list =
      test::run_command(std::string(TESSERA_BIN) + " matrix --list --filter " + filter);
  std::istringstream names(list.output);
  size_t n = 0;
  for (std::string name; std::getline(names, name);) {
    if (name.empty()) continue;
    ++n;
    EXPECT_NE(r.output.find("] cpu0 " + name + " pass"), std::string::npos) << name << "\n"
                                                                            << r.output;
  }
  ASSERT_GT(n, 0u);
  EXPECT_NE(r.output.find("[1/" + std::to_string(n) + "] cpu0 "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[" + std::to_string(n) + "/" + std::to_string(n) + "] cpu0 "),
            std::string::npos)
      << r.output;
}

// A driver that crashes, aborts or hangs inside a case costs that case a "crash" / "timeout" row
// naming the signal and driver; the other cases and devices are still run and reported.
TEST(MatrixCommand, CrashAndHangBecomeRows) {
  for (const char* kind : {"crash", "abort", "hang"}) {
    const std::string victim = "rms_norm/f32/3x17";
    const auto r = test::run_command("TESSERA_MATRIX_FAULT=" + victim + ":" + kind + " " +
                                     std::string(TESSERA_BIN) +
                                     " matrix --json --filter rms_norm/f32/ --case-timeout 5");
    EXPECT_NE(r.exit_code, 0) << kind << ": " << r.output;
    ASSERT_NE(r.output.find('{'), std::string::npos) << kind << ": " << r.output;
    const auto root = boost::json::parse(r.output.substr(r.output.find('{')));
    const auto& results = root.at("results").as_array();
    int bad = 0, pass = 0;
    for (const auto& row : results) {
      const std::string name = std::string(row.at("kernel").as_string()) + "/" +
                               std::string(row.at("format").as_string()) + "/" +
                               std::string(row.at("shape").as_string());
      const std::string status(row.at("status").as_string());
      const std::string note(row.at("note").as_string());
      if (name == victim) {
        ++bad;
        EXPECT_EQ(status, std::string(kind) == "hang" ? "timeout" : "crash") << note;
        EXPECT_NE(note.find("driver"), std::string::npos) << note;
        if (std::string(kind) == "crash") {
          EXPECT_NE(note.find("SIGSEGV"), std::string::npos) << note;
        }
        if (std::string(kind) == "abort") {
          EXPECT_NE(note.find("SIGABRT"), std::string::npos) << note;
        }
      } else {
        pass += status == "pass";
      }
    }
    EXPECT_EQ(bad, int(registry().devices().size())) << kind;
    EXPECT_EQ(size_t(pass + bad), results.size()) << kind << ": the other cases still ran";
    EXPECT_GT(pass, 0) << kind;
  }
}

}  // namespace
}  // namespace tessera::ops
