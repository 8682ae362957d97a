// The `tessera` command's sub-command registry: each cmd_*.cpp file registers one sub-command.
#pragma once

#include <boost/program_options.hpp>

#include <functional>
#include <string>
#include <vector>

namespace tessera::cli {

// A sub-command: its name, a one-line summary for `tessera --help`, and its entry point, which gets
// the arguments after the sub-command's name and returns the process exit code. Errors are thrown;
// main() prints them once.
struct Command {
  std::string name;
  std::string summary;
  std::function<int(const std::vector<std::string>& args)> run;
};

// Every registered command, sorted by name. Registration happens during static initialization
// (the cmd_*.cpp files are linked into the executable directly, never through a static library).
std::vector<Command>& commands();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string summary,
                   std::function<int(const std::vector<std::string>&)> run);
};

// Parses a command's arguments into `vm` and applies required/notifier rules. Returns false after
// printing `opts` when --help was given (the command then exits 0); throws on bad options.
bool parse_options(const std::vector<std::string>& args,
                   const boost::program_options::options_description& opts,
                   boost::program_options::variables_map& vm);

}  // namespace tessera::cli
