// Input checks shared by the commands (see input_checks.h).
#include "host/cli/input_checks.h"

#include <unistd.h>

#include <filesystem>
#include <stdexcept>

#include "host/engine/reference_model.h"
#include "scheduler/config.h"

namespace tessera::cli {

void require_regular_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status))
    throw std::runtime_error(what + ": '" + path + "' does not exist");
  if (!std::filesystem::is_regular_file(status))
    throw std::runtime_error(what + ": '" + path +
                             "' is not a regular file (a directory, FIFO or device)");
}

void require_reference_memory(const gguf::GgufFile& file, const model::ModelSpec& spec,
                              uint64_t n_tokens) {
  const uint64_t need = engine::reference_host_bytes(file, spec, n_tokens);
  const uint64_t have = uint64_t(sysconf(_SC_PHYS_PAGES)) * uint64_t(sysconf(_SC_PAGESIZE));
  if (need > have)
    throw std::runtime_error("--reference: " + file.path() + " needs " + sched::format_bytes(need) +
                             " of host memory (weights, KV cache, activations) but this machine "
                             "has " +
                             sched::format_bytes(have));
}

}  // namespace tessera::cli
