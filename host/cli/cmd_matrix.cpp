// `tessera matrix [--json] [--devices cpu0,gpu0] [--filter SUBSTR] [--timing]`: every portability-
// matrix case on every selected device against its scalar reference; non-zero exit on any failure.
// Each device's cases run in a child process (this binary, `matrix --child-device ID`), so a driver
// that crashes or hangs costs one "crash"/"timeout" row and every other row is still reported.
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

extern "C" char** environ;

// Child protocol, one line each on the result descriptor: "start I" before case I runs, then
// "result JSON" with its MatrixCaseResult.
boost::json::object result_to_json(const ops::MatrixCaseResult& r) {
  boost::json::object o;
  o["status"] = r.status;
  o["max_abs_err"] = r.max_abs_err;
  o["max_rel_err"] = r.max_rel_err;
  o["nmse"] = r.nmse;
  o["seconds"] = r.seconds;
  o["bytes"] = r.bytes;
  o["flops"] = r.flops;
  o["note"] = r.note;
  return o;
}

ops::MatrixCaseResult result_from_json(const boost::json::object& o) {
  ops::MatrixCaseResult r;
  r.status = o.at("status").as_string().c_str();
  r.max_abs_err = o.at("max_abs_err").to_number<double>();
  r.max_rel_err = o.at("max_rel_err").to_number<double>();
  r.nmse = o.at("nmse").to_number<double>();
  r.seconds = o.at("seconds").to_number<double>();
  r.bytes = o.at("bytes").to_number<double>();
  r.flops = o.at("flops").to_number<double>();
  r.note = o.at("note").as_string().c_str();
  return r;
}

// The child: runs cases [from, end) on one device, reporting on descriptor `fd`.
int run_child(const std::string& device_id, const std::vector<ops::MatrixCase>& cases, size_t from,
              int fd, bool timing) {
  FILE* out = fdopen(fd, "w");
  if (!out) throw TesseraError("tessera matrix: cannot open result descriptor");
  auto registry = tessera::cli::discover_devices();
  const Device& d = registry.get(device_id);
  // Fault injection for the isolation tests: TESSERA_MATRIX_FAULT=CASE:crash|abort|hang makes
  // that case die or hang the way a broken driver would.
  std::string fault_case, fault_kind;
  if (const std::string& spec = tessera::cli::settings().matrix_fault; !spec.empty()) {
    const size_t colon = spec.rfind(':');
    fault_case = spec.substr(0, colon);
    fault_kind = colon == std::string::npos ? "crash" : spec.substr(colon + 1);
  }
  for (size_t i = from; i < cases.size(); ++i) {
    std::fprintf(out, "start %zu\n", i);
    std::fflush(out);
    if (cases[i].name() == fault_case) {
      if (fault_kind == "hang") {
        for (;;) pause();
      } else if (fault_kind == "abort") {
        std::abort();
      } else {
        signal(SIGSEGV, SIG_DFL);  // a driver's handler (LLVM's) must not swallow the injected one
        raise(SIGSEGV);
      }
    }
    const ops::MatrixCaseResult r = ops::run_matrix_case(cases[i], d, timing);
    std::fprintf(out, "result %s\n", boost::json::serialize(result_to_json(r)).c_str());
    std::fflush(out);
  }
  std::fclose(out);
  return 0;
}

std::string signal_text(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

// The parent's side of one device: children run its cases from the first not yet reported; a
// child that dies or stays silent past the timeout turns the case it was running into a "crash" or
// "timeout" row and a new child continues after it.
std::vector<ops::MatrixCaseResult> run_device_isolated(const Device& d,
                                                       const std::vector<ops::MatrixCase>& cases,
                                                       const std::vector<std::string>& pass_args,
                                                       double case_timeout_s, bool json,
                                                       bool progress) {
  std::vector<ops::MatrixCaseResult> results;
  // --progress: each row on stderr as its result arrives, so a run cut off early still shows
  // what it finished.
  auto report = [&](const ops::MatrixCaseResult& r) {
    if (!progress) return;
    const size_t i = results.size() - 1;
    std::fprintf(stderr, "[%zu/%zu] %s %s %s max_abs %.2e%s%s\n", i + 1, cases.size(),
                 d.id().c_str(), cases[i].name().c_str(), r.status.c_str(), r.max_abs_err,
                 r.seconds > 0 ? (" time_us " + std::to_string(r.seconds * 1e6)).c_str() : "",
                 r.note.empty() ? "" : ("  " + r.note.substr(0, r.note.find('\n'))).c_str());
    std::fflush(stderr);
  };
  const std::string driver = d.info().platform_name + " " + d.info().driver_version;
  while (results.size() < cases.size()) {
    const size_t from = results.size();
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
      throw TesseraError(std::string("tessera matrix: pipe: ") + std::strerror(errno));
    std::vector<std::string> argv_s = {
        "/proc/self/exe", "matrix", "--child-device", d.id(), "--child-from", std::to_string(from),
        "--child-fd",     "3"};
    argv_s.insert(argv_s.end(), pass_args.begin(), pass_args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 3);  // dup2 clears O_CLOEXEC on 3
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (rc != 0) {
      close(fds[0]);
      throw TesseraError(std::string("tessera matrix: cannot start a child: ") + std::strerror(rc));
    }
    // Read lines until EOF or a timeout on the running case.
    std::string buf;
    size_t running = SIZE_MAX;
    bool timed_out = false;
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(int64_t(case_timeout_s * 1000));
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                            deadline - std::chrono::steady_clock::now())
                            .count();
      if (left <= 0) {
        timed_out = true;
        break;
      }
      pollfd p{fds[0], POLLIN, 0};
      const int pr = poll(&p, 1, int(std::min<int64_t>(left, 1000)));
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) continue;
      char chunk[4096];
      const ssize_t n = read(fds[0], chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // EOF: the child exited or died
      buf.append(chunk, size_t(n));
      for (size_t nl; (nl = buf.find('\n')) != std::string::npos;) {
        const std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        if (line.rfind("start ", 0) == 0) {
          running = std::stoul(line.substr(6));
          deadline = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(int64_t(case_timeout_s * 1000));
        } else if (line.rfind("result ", 0) == 0 && running == results.size()) {
          results.push_back(result_from_json(boost::json::parse(line.substr(7)).as_object()));
          report(results.back());
          running = SIZE_MAX;
        }
      }
    }
    close(fds[0]);
    if (timed_out) kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (results.size() == cases.size()) break;
    // The child stopped before reporting every case: the case it was running (or, when it died
    // before starting one, the next) gets the verdict.
    const size_t idx = running != SIZE_MAX ? running : results.size();
    if (idx != results.size())
      throw TesseraError("tessera matrix: child for " + d.id() + " lost the case order");
    ops::MatrixCaseResult r;
    if (timed_out) {
      r.status = "timeout";
      r.note = "no result within " + std::to_string(int(case_timeout_s)) + " s (driver " + driver +
               "); the child was killed";
    } else if (WIFSIGNALED(status)) {
      r.status = "crash";
      r.note = "killed by " + signal_text(WTERMSIG(status)) + " (driver " + driver + ")";
    } else {
      r.status = "crash";
      r.note = "the child exited with status " +
               std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
               " before reporting (driver " + driver + ")";
    }
    if (!json)
      std::fprintf(stderr, "%s %s on %s: %s\n", r.status == "timeout" ? "TIMEOUT" : "CRASH",
                   cases[idx].name().c_str(), d.id().c_str(), r.note.c_str());
    results.push_back(std::move(r));
    report(results.back());
  }
  return results;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// --filter: a comma-separated list of substrings, any of which selects a case ("" selects all).
bool matches_filter(const std::string& name, const std::string& filter) {
  if (filter.empty()) return true;
  for (const std::string& part : split_commas(filter))
    if (name.find(part) != std::string::npos) return true;
  return false;
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
      "filter", po::value<std::string>(),
      "run only cases whose kernel/format/shape contains this (comma-separated: any of these)")(
      "timing", "also time each case (median of 10 launches, profiling events)")(
      "json-file", po::value<std::string>(), "also write the JSON results to this file")(
      "list", "list the cases without running them")(
      "progress", "also print each row to stderr as it finishes (a run cut off keeps them)")(
      "case-timeout", po::value<double>()->default_value(300),
      "seconds one case may run before its child process is killed (a \"timeout\" row)");
  po::options_description hidden;
  hidden.add_options()("child-device", po::value<std::string>())(
      "child-from", po::value<size_t>()->default_value(0))("child-fd", po::value<int>());
  po::options_description all;
  all.add(opts).add(hidden);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).run(), vm);
  if (vm.count("help")) {
    std::cout
        << "usage: tessera matrix [--json] [--devices cpu0,gpu0] [--filter SUBSTR] [--timing]\n"
        << opts;
    return 0;
  }
  const std::string filter = vm.count("filter") ? vm["filter"].as<std::string>() : "";
  std::vector<ops::MatrixCase> cases;
  for (auto& c : ops::all_matrix_cases())
    if (matches_filter(c.name(), filter)) cases.push_back(std::move(c));
  if (vm.count("list")) {
    for (const auto& c : cases) std::printf("%s\n", c.name().c_str());
    return 0;
  }
  if (cases.empty())
    throw std::runtime_error("tessera matrix: no case matches --filter '" + filter + "'");

  const bool timing = vm.count("timing") > 0;
  if (vm.count("child-device")) {
    if (!vm.count("child-fd"))
      throw TesseraError("tessera matrix: --child-device needs --child-fd");
    return run_child(vm["child-device"].as<std::string>(), cases, vm["child-from"].as<size_t>(),
                     vm["child-fd"].as<int>(), timing);
  }
  const double case_timeout = vm["case-timeout"].as<double>();
  if (!(case_timeout > 0))
    throw TesseraError("tessera matrix: --case-timeout must be a positive number of seconds");
  std::vector<std::string> pass_args;
  if (!filter.empty()) pass_args.insert(pass_args.end(), {"--filter", filter});
  if (timing) pass_args.push_back("--timing");

  auto registry = tessera::cli::discover_devices();
  std::vector<const Device*> devices;
  if (vm.count("devices")) {
    for (const std::string& id : split_commas(vm["devices"].as<std::string>()))
      devices.push_back(&registry.get(id));  // throws listing the ids that exist
  } else {
    for (const auto& d : registry.devices()) devices.push_back(d.get());
  }
  const bool json = vm.count("json") > 0;

  std::vector<Row> rows;
  int failed = 0;
  for (const Device* d : devices) {
    std::vector<ops::MatrixCaseResult> results =
        run_device_isolated(*d, cases, pass_args, case_timeout, json, vm.count("progress") > 0);
    for (size_t i = 0; i < cases.size(); ++i) {
      const auto& c = cases[i];
      Row row{d, &c, std::move(results[i])};
      if (row.r.status == "crash" || row.r.status == "timeout") {
        ++failed;
      } else if (row.r.status == "fail") {
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
    std::printf("\n%zu cases x %zu devices: %d failed (crash and timeout included)\n", cases.size(),
                devices.size(), failed);
  }
  return failed > 0 ? 1 : 0;
}

const CommandRegistrar kRegistrar(
    "matrix", "run every kernel case on every device against the scalar reference", run_matrix);

}  // namespace
}  // namespace tessera::cli
