// Where OpenCL kernel text comes from: the copy embedded at build time, or a directory on disk
// (for kernel development; the CLI takes it from TESSERA_KERNEL_DIR). Resolves #include "x.clh"
// textually.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace tessera {

class KernelSources {
 public:
  // The sources embedded in the binary.
  static KernelSources embedded();
  // The *.cl / *.clh files of `dir`, read at each resolve() so edits apply without a rebuild.
  static KernelSources from_directory(std::filesystem::path dir);

  // Adds or replaces one file (tests use this to simulate source edits).
  void set(const std::string& name, std::string text);

  // Full text of program `name` ("probes" or "probes.cl"), includes expanded (each file once).
  // Throws std::runtime_error naming the file when it or an include is missing.
  std::string resolve(const std::string& name) const;

  std::vector<std::string> program_names() const;  // the *.cl files, without extension
  std::string origin() const;                      // "embedded" or the directory

 private:
  std::string read_file(const std::string& name) const;
  std::map<std::string, std::string> files_;
  std::filesystem::path dir_;  // empty: embedded
};

}  // namespace tessera
