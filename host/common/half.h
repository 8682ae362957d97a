// Conversions between float and the 16-bit float formats stored in GGUF files (IEEE fp16,
// bfloat16), bit-exact with ggml's scalar conversions.
#pragma once

#include <cstdint>

namespace tessera {

// Round to nearest, ties to even; overflow gives +-Inf; every NaN becomes sign | 0x7E00 (ggml's
// choice).
uint16_t fp32_to_fp16(float f);
// Exact (every fp16 value, subnormals included, is representable as a float).
float fp16_to_fp32(uint16_t h);
// Round to nearest, ties to even; NaN keeps its sign and upper payload bits and is forced quiet.
uint16_t fp32_to_bf16(float f);
// Exact.
float bf16_to_fp32(uint16_t h);

}  // namespace tessera
