// The portability matrix through `tessera matrix` (each device's cases in child processes) on the
// OpenCL implementation TESSERA_MATRIX_ENV selects (the build defines it: only rusticl's llvmpipe
// device), over TESSERA_MATRIX_FILTER's cases: no failing, crashing or hanging row, at least 80% of
// the rows pass, and every other row says why the device cannot run it.
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <fstream>
#include <map>
#include <sstream>

#include "tests/devices/test_util.h"

namespace tessera {
namespace {

TEST(MatrixImplementation, RunsToTheEndWithoutFailures) {
  test::TempDir dir;
  const auto json_path = dir.path() / "matrix.json";
  // The cases CI can afford on a slow implementation (tests/matrix/CMakeLists.txt).
  const std::string filter = TESSERA_MATRIX_FILTER;
  const auto r = test::run_command(std::string(TESSERA_MATRIX_ENV) + " " + TESSERA_BIN +
                                   " matrix --json-file " + json_path.string() +
                                   (filter.empty() ? std::string() : " --filter '" + filter + "'"));
  std::ifstream in(json_path);
  ASSERT_TRUE(in) << "no report written: " << r.output;
  std::stringstream ss;
  ss << in.rdbuf();
  const auto root = boost::json::parse(ss.str());
  const auto& results = root.at("results").as_array();
  ASSERT_FALSE(results.empty());
  std::map<std::string, std::pair<int, int>> per_device;  // pass, rows
  for (const auto& row : results) {
    const std::string status(row.at("status").as_string());
    const std::string name = std::string(row.at("device").as_string()) + " " +
                             std::string(row.at("kernel").as_string()) + "/" +
                             std::string(row.at("format").as_string()) + "/" +
                             std::string(row.at("shape").as_string());
    const std::string note(row.at("note").as_string());
    EXPECT_TRUE(status == "pass" || status == "unsupported")
        << name << ": " << status << ": " << note;
    if (status == "unsupported") {
      EXPECT_FALSE(note.empty()) << name;
    }
    auto& [pass, rows] = per_device[std::string(row.at("device").as_string())];
    pass += status == "pass";
    ++rows;
  }
  for (const auto& [device, counts] : per_device) {
    std::printf("%s: %d of %d rows pass\n", device.c_str(), counts.first, counts.second);
    EXPECT_GE(counts.first * 5, counts.second * 4) << device << ": under 80% of the rows pass";
  }
  EXPECT_EQ(r.exit_code, 0) << r.output.substr(0, 4000);
}

}  // namespace
}  // namespace tessera
