// The error every GGUF reader/writer problem throws; its message reads "<file>: <field>:
// <problem>".
#pragma once

#include "host/common/error.h"

namespace tessera::gguf {

struct GgufError : TesseraError {
  using TesseraError::TesseraError;
};

}  // namespace tessera::gguf
