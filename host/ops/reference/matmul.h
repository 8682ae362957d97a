// Scalar reference of the ops that read weights in ggml block formats: matmul and embedding lookup.
#pragma once

#include <cstdint>
#include <span>

#include "host/gguf/gguf.h"

namespace tessera::reference {

// A 2-D weight in any format host/ops/quant can dequantize, ggml layout: `rows` rows of `cols`
// elements (cols = ggml ne[0], the contiguous dimension), each row gguf::row_bytes(type, cols)
// bytes, back to back. Non-owning: data must outlive every use (normally it points into a GgufFile
// mapping).
struct WeightMatrix {
  gguf::TensorType type = gguf::TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t cols = 0;
  int64_t rows = 0;

  uint64_t row_stride() const { return gguf::row_bytes(type, uint64_t(cols)); }
  // Dequantizes row r into dst (cols floats). Throws std::out_of_range when r is not a row.
  void dequantize_row(int64_t r, std::span<float> dst) const;
};

// A stack of n_expert same-shaped matrices (ggml 3-D tensor [cols, rows, n_expert]: expert e's rows
// follow expert e-1's), as MoE layers store ffn_{gate,up,down}_exps.
struct ExpertMatrices {
  gguf::TensorType type = gguf::TensorType::F32;
  const uint8_t* data = nullptr;
  int64_t cols = 0;
  int64_t rows = 0;
  int64_t n_expert = 0;

  // Expert e's matrix. Throws std::out_of_range when e is not in [0, n_expert).
  WeightMatrix expert(int64_t e) const;
};

// out = x * W^T for a batch: x [n_tokens][w.cols], out [n_tokens][w.rows];
// out[t][r] = sum_c x[t][c] * W[r][c], W's rows dequantized exactly as ggml does and dotted in
// double (ggml instead quantizes x for Q4/Q8 formats, so kernels are compared with a tolerance).
void matmul(std::span<const float> x, const WeightMatrix& w, std::span<float> out);

// Embedding lookup: out [ids.size()][table.cols] = dequantized rows ids[i] of table. Throws
// std::out_of_range naming the id when one is not in [0, table.rows).
void embedding(const WeightMatrix& table, std::span<const int32_t> ids, std::span<float> out);

}  // namespace tessera::reference
