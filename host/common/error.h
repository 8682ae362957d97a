// Base class of every error Tessera throws, so callers at the CLI/daemon boundary can catch one
// type.
#pragma once

#include <stdexcept>
#include <string>

namespace tessera {

// Messages name the file or field and the problem ("model.gguf: tensor 'x': offset ... past end").
struct TesseraError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace tessera
