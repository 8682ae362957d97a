// Kernel text lookup and textual #include expansion.
#include "devices/kernel_sources.h"

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "cl_kernels/embedded_kernels.h"

namespace tessera {

KernelSources KernelSources::embedded() {
  KernelSources s;
  for (const auto& f : embedded_kernel_files()) s.files_[std::string(f.name)] = std::string(f.text);
  return s;
}

KernelSources KernelSources::from_directory(std::filesystem::path dir) {
  if (!std::filesystem::is_directory(dir))
    throw std::runtime_error("kernel directory '" + dir.string() +
                             "' does not exist or is not a directory");
  KernelSources s;
  s.dir_ = std::move(dir);
  return s;
}

void KernelSources::set(const std::string& name, std::string text) {
  files_[name] = std::move(text);
}

std::string KernelSources::origin() const {
  return dir_.empty() ? "embedded" : dir_.string();
}

std::string KernelSources::read_file(const std::string& name) const {
  if (auto it = files_.find(name); it != files_.end()) return it->second;
  if (!dir_.empty()) {
    std::ifstream in(dir_ / name, std::ios::binary);
    if (in) {
      std::ostringstream ss;
      ss << in.rdbuf();
      return ss.str();
    }
  }
  throw std::runtime_error("OpenCL source file '" + name + "' not found in " + origin() +
                           " kernels");
}

std::vector<std::string> KernelSources::program_names() const {
  std::set<std::string> names;
  auto add = [&](const std::string& file) {
    if (file.size() > 3 && file.ends_with(".cl")) names.insert(file.substr(0, file.size() - 3));
  };
  for (const auto& [name, _] : files_) add(name);
  if (!dir_.empty())
    for (const auto& e : std::filesystem::directory_iterator(dir_))
      add(e.path().filename().string());
  return {names.begin(), names.end()};
}

std::string KernelSources::resolve(const std::string& name) const {
  const std::string file = name.ends_with(".cl") ? name : name + ".cl";
  std::set<std::string> included;
  // Expands `#include "x"` lines recursively; a file included twice is skipped the second time.
  auto expand = [&](auto&& self, const std::string& fname) -> std::string {
    std::istringstream in(read_file(fname));
    std::string out, line;
    while (std::getline(in, line)) {
      const auto pos = line.find("#include \"");
      if (pos != std::string::npos && line.find_first_not_of(" \t") == pos) {
        const auto end = line.find('"', pos + 10);
        const std::string inc = line.substr(pos + 10, end - pos - 10);
        if (included.insert(inc).second) out += self(self, inc);
        continue;
      }
      out += line;
      out += '\n';
    }
    return out;
  };
  included.insert(file);
  return expand(expand, file);
}

}  // namespace tessera
