// Checks the `tessera` commands make on their inputs before starting work, so bad input fails at
// once with a message naming it instead of hanging or running out of memory later.
#pragma once

#include <cstdint>
#include <string>

#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"

namespace tessera::cli {

// Throws std::runtime_error naming `what` (e.g. "-f") unless `path` is a regular file: a FIFO
// would block the read forever and a directory reads as empty.
void require_regular_file(const std::string& path, const std::string& what);

// Throws std::runtime_error when the reference path would need more host memory for `spec` over
// `n_tokens` tokens than the machine has (the OpenCL path's planner refuses such models likewise).
void require_reference_memory(const gguf::GgufFile& file, const model::ModelSpec& spec,
                              uint64_t n_tokens);

}  // namespace tessera::cli
