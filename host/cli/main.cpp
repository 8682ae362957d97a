// Entry point of the `tessera` command: dispatches to the registered sub-commands and prints errors
// once.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "host/cli/command.h"
#include "host/cli/output_file.h"

namespace tessera::cli {

std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}

CommandRegistrar::CommandRegistrar(std::string name, std::string summary,
                                   std::function<int(const std::vector<std::string>&)> run) {
  commands().push_back({std::move(name), std::move(summary), std::move(run)});
}

bool parse_options(const std::vector<std::string>& args,
                   const boost::program_options::options_description& opts,
                   boost::program_options::variables_map& vm) {
  namespace po = boost::program_options;
  // llama.cpp's multi-letter short options, for the commands that have their long form.
  std::vector<std::string> expanded = args;
  for (auto& a : expanded) {
    for (const auto& [shorthand, long_name] :
         {std::pair<std::string, std::string>{"-ctk", "cache-type-k"}, {"-ctv", "cache-type-v"}}) {
      if (!opts.find_nothrow(long_name, false)) continue;
      if (a == shorthand)
        a = "--" + long_name;
      else if (a.rfind(shorthand + "=", 0) == 0)
        a = "--" + long_name + a.substr(shorthand.size());
    }
  }
  const auto parsed = po::command_line_parser(expanded).options(opts).run();
  // Without this, a word after an option's value (`-p Once upon a time`) would be dropped silently.
  const auto extra = po::collect_unrecognized(parsed.options, po::include_positional);
  if (!extra.empty()) {
    throw std::runtime_error("unexpected argument '" + extra.front() +
                             "' (quote a value that has spaces, e.g. -p \"Once upon a time\")");
  }
  po::store(parsed, vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return false;
  }
  po::notify(vm);
  return true;
}

}  // namespace tessera::cli

namespace {

void print_usage() {
  std::printf("tessera: run large language models on every OpenCL device of this machine\n\n");
  std::printf(
      "usage: tessera COMMAND [options]   (tessera COMMAND --help for its options)\n\ncommands:\n");
  auto cmds = tessera::cli::commands();
  std::sort(cmds.begin(), cmds.end(), [](auto& a, auto& b) { return a.name < b.name; });
  for (const auto& c : cmds) std::printf("  %-12s %s\n", c.name.c_str(), c.summary.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // Every log line goes to stderr: stdout carries only a command's result (generated text, --json),
  // which a warning must never corrupt.
  spdlog::set_default_logger(spdlog::stderr_color_mt("tessera"));
  if (const char* level = std::getenv("TESSERA_LOG")) {
    spdlog::set_level(spdlog::level::from_str(level));
  } else {
    spdlog::set_level(spdlog::level::warn);
  }
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  for (const auto& c : tessera::cli::commands()) {
    if (c.name != name) continue;
    try {
      const int rc = c.run(std::vector<std::string>(argv + 2, argv + argc));
      tessera::cli::check_stdout();
      return rc;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tessera %s: error: %s\n", name.c_str(), e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "tessera: unknown command '%s'\n\n", name.c_str());
  print_usage();
  return 2;
}
