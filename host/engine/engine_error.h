// The engine's error type: bad sampler settings, requests or batches. Under TesseraError, so the
// CLI and daemon boundary catch engine errors with every other project error.
#pragma once

#include "host/common/error.h"

namespace tessera::engine {

struct EngineError : TesseraError {
  using TesseraError::TesseraError;
};

}  // namespace tessera::engine
