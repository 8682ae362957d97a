// Scalar dequantization (bit-exact with ggml) and round-to-nearest reference quantization of rows
// in ggml's block formats. Used by the scalar reference ops, the GGUF writer and tools.
#pragma once

#include <cstdint>

#include "host/common/error.h"
#include "host/gguf/tensor_type.h"

namespace tessera::quant {

struct QuantError : TesseraError {
  using TesseraError::TesseraError;
};

// Dequantizes n elements (a multiple of the type's block size) from src to dst. src needs no
// particular alignment. Results are bit-identical to ggml's dequantize_row_* (no fused
// multiply-add). Throws QuantError for an unsupported type or a bad n. Thread-safe (no shared
// state).
void dequantize_row(gguf::TensorType t, const void* src, float* dst, int64_t n);

// Quantizes n floats (a multiple of the block size) into type t at dst (row_bytes(t, n) bytes).
// Round-to-nearest per block as ggml's reference quantizers; K-quants search a few scales for the
// least squared error. Throws QuantError for an unsupported type, a bad n or a non-finite input.
void quantize_row(gguf::TensorType t, const float* src, void* dst, int64_t n);

// Types each direction supports: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
// Q8_K, TQ1_0, TQ2_0, MXFP4.
bool can_quantize(gguf::TensorType t);
bool can_dequantize(gguf::TensorType t);

}  // namespace tessera::quant
