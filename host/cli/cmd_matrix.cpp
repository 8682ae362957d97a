// `tessera matrix [--json] [--devices cpu0,gpu0] [--filter SUBSTR] [--timing]`: every portability-
// matrix case on every selected device against its scalar reference; non-zero exit on any failure.
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <array>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "devices/device.h"
#include "host/cli/command.h"
#include "host/cli/settings.h"
#include "host/ops/device/matrix.h"

namespace tessera::cli {
namespace {

struct Row {
  const Device* device;
  const ops::MatrixCase* c;
  ops::MatrixCaseResult r;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// First line of a note: build logs stay in the JSON, the table stays one line per case.
std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

// The first n lines (enough of a build log to see the first error).
std::string first_lines(const std::string& s, int n) {
  size_t pos = 0;
  for (int i = 0; i < n && pos != std::string::npos; ++i) {
    pos = s.find('\n', pos == 0 ? 0 : pos + 1);
  }
  return pos == std::string::npos ? s : s.substr(0, pos) + "\n  ...";
}

std::string rate(double amount, double seconds, double unit) {
  if (seconds <= 0 || amount <= 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", amount / seconds / unit);
  return buf;
}

void print_table(const std::vector<const Device*>& devices, const std::vector<Row>& rows,
                 bool timing) {
  for (const Device* d : devices) {
    std::printf("\n== %s  [%s, %s]\n", d->info().label().c_str(), d->info().platform_name.c_str(),
                d->info().driver_version.c_str());
    std::printf("%-18s %-13s %-16s %-11s %-9s %-9s", "kernel", "format", "shape", "status",
                "max_abs", "max_rel");
    if (timing) std::printf(" %-9s %-8s %-8s", "time_us", "GB/s", "GFLOP/s");
    std::printf("  note\n");
    for (const Row& row : rows) {
      if (row.device != d) continue;
      const auto& r = row.r;
      std::printf("%-18s %-13s %-16s %-11s %-9.2e %-9.2e", row.c->kernel.c_str(),
                  row.c->format.c_str(), row.c->shape.c_str(), r.status.c_str(), r.max_abs_err,
                  r.max_rel_err);
      if (timing) {
        std::printf(" %-9.1f %-8s %-8s", r.seconds * 1e6, rate(r.bytes, r.seconds, 1e9).c_str(),
                    rate(r.flops, r.seconds, 1e9).c_str());
      }
      std::printf("  %s\n", first_line(r.note).c_str());
    }
  }
  // Summary: kernel x device, passed / run (unsupported counted apart).
  std::map<std::string, std::map<const Device*, std::array<int, 3>>> summary;  // pass, fail, unsup
  for (const Row& row : rows) {
    auto& s = summary[row.c->kernel][row.device];
    s[row.r.status == "pass" ? 0 : row.r.status == "unsupported" ? 2 : 1]++;
  }
  std::printf("\n%-18s", "summary");
  for (const Device* d : devices) std::printf(" %-22s", d->id().c_str());
  std::printf("\n");
  for (const auto& [kernel, per_device] : summary) {
    std::printf("%-18s", kernel.c_str());
    for (const Device* d : devices) {
      auto it = per_device.find(d);
      std::string cell = "-";
      if (it != per_device.end()) {
        const auto& s = it->second;
        cell = std::to_string(s[0]) + "/" + std::to_string(s[0] + s[1]) + " pass";
        if (s[1]) cell += " FAIL " + std::to_string(s[1]);
        if (s[2]) cell += " unsup " + std::to_string(s[2]);
      }
      std::printf(" %-22s", cell.c_str());
    }
    std::printf("\n");
  }
}

boost::json::value to_json(const std::vector<const Device*>& devices,
                           const std::vector<Row>& rows) {
  boost::json::array devs;
  for (const Device* d : devices) {
    boost::json::object o;
    o["id"] = d->id();
    o["name"] = d->info().name;
    o["platform"] = d->info().platform_name;
    o["driver_version"] = d->info().driver_version;
    devs.push_back(std::move(o));
  }
  boost::json::array results;
  for (const Row& row : rows) {
    boost::json::object o;
    o["device"] = row.device->id();
    o["kernel"] = row.c->kernel;
    o["format"] = row.c->format;
    o["shape"] = row.c->shape;
    o["status"] = row.r.status;
    o["max_abs_err"] = row.r.max_abs_err;
    o["max_rel_err"] = row.r.max_rel_err;
    o["nmse"] = row.r.nmse;
    o["seconds"] = row.r.seconds;
    o["bytes"] = row.r.bytes;
    o["flops"] = row.r.flops;
    o["gb_per_s"] = row.r.seconds > 0 ? row.r.bytes / row.r.seconds / 1e9 : 0.0;
    o["gflop_per_s"] = row.r.seconds > 0 ? row.r.flops / row.r.seconds / 1e9 : 0.0;
    o["note"] = row.r.note;
    results.push_back(std::move(o));
  }
  boost::json::object root;
  root["devices"] = std::move(devs);
  root["results"] = std::move(results);
  return root;
}

int run_matrix(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  po::options_description opts("tessera matrix options");
  opts.add_options()("help,h", "show this help")("json", "print JSON instead of tables")(
      "devices", po::value<std::string>(), "comma-separated device ids (default: all)")(
      "filter", po::value<std::string>(), "run only cases whose kernel/format/shape contains this")(
      "timing", "also time each case (median of 10 launches, profiling events)")(
      "json-file", po::value<std::string>(), "also write the JSON results to this file")(
      "list", "list the cases without running them");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout
        << "usage: tessera matrix [--json] [--devices cpu0,gpu0] [--filter SUBSTR] [--timing]\n"
        << opts;
    return 0;
  }
  const std::string filter = vm.count("filter") ? vm["filter"].as<std::string>() : "";
  std::vector<ops::MatrixCase> cases;
  for (auto& c : ops::all_matrix_cases())
    if (filter.empty() || c.name().find(filter) != std::string::npos) cases.push_back(std::move(c));
  if (vm.count("list")) {
    for (const auto& c : cases) std::printf("%s\n", c.name().c_str());
    return 0;
  }
  if (cases.empty())
    throw std::runtime_error("tessera matrix: no case matches --filter '" + filter + "'");

  auto registry = tessera::cli::discover_devices();
  std::vector<const Device*> devices;
  if (vm.count("devices")) {
    for (const std::string& id : split_commas(vm["devices"].as<std::string>()))
      devices.push_back(&registry.get(id));  // throws listing the ids that exist
  } else {
    for (const auto& d : registry.devices()) devices.push_back(d.get());
  }
  const bool timing = vm.count("timing") > 0;
  const bool json = vm.count("json") > 0;

  std::vector<Row> rows;
  int failed = 0;
  for (const Device* d : devices) {
    for (const auto& c : cases) {
      Row row{d, &c, ops::run_matrix_case(c, *d, timing)};
      if (row.r.status == "fail") {
        ++failed;
        if (!json)
          std::fprintf(stderr, "FAIL %s on %s: %s\n", c.name().c_str(), d->id().c_str(),
                       first_lines(row.r.note, 4).c_str());
      }
      rows.push_back(std::move(row));
    }
  }
  if (vm.count("json-file")) {
    const std::string path = vm["json-file"].as<std::string>();
    std::ofstream f(path);
    f << boost::json::serialize(to_json(devices, rows)) << "\n";
    if (!f) throw std::runtime_error("tessera matrix: cannot write --json-file " + path);
  }
  if (json) {
    std::cout << boost::json::serialize(to_json(devices, rows)) << "\n";
  } else {
    print_table(devices, rows, timing);
    std::printf("\n%zu cases x %zu devices: %d failed\n", cases.size(), devices.size(), failed);
  }
  return failed > 0 ? 1 : 0;
}

const CommandRegistrar kRegistrar(
    "matrix", "run every kernel case on every device against the scalar reference", run_matrix);

}  // namespace
}  // namespace tessera::cli
