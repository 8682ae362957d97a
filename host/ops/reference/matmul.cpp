// Scalar matmul / embedding over quantized weights: one dequantized row at a time.
#include "host/ops/reference/matmul.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "host/ops/quant/quant.h"

namespace tessera::reference {

void WeightMatrix::dequantize_row(int64_t r, std::span<float> dst) const {
  if (r < 0 || r >= rows) {
    throw std::out_of_range("WeightMatrix: row " + std::to_string(r) + " is not in [0, " +
                            std::to_string(rows) + ")");
  }
  if (int64_t(dst.size()) != cols) {
    throw std::invalid_argument("WeightMatrix: destination has " + std::to_string(dst.size()) +
                                " floats, the row has " + std::to_string(cols));
  }
  quant::dequantize_row(type, data + uint64_t(r) * row_stride(), dst.data(), cols);
}

WeightMatrix ExpertMatrices::expert(int64_t e) const {
  if (e < 0 || e >= n_expert) {
    throw std::out_of_range("ExpertMatrices: expert " + std::to_string(e) + " is not in [0, " +
                            std::to_string(n_expert) + ")");
  }
  const uint64_t bytes_per_expert = gguf::row_bytes(type, uint64_t(cols)) * uint64_t(rows);
  return WeightMatrix{type, data + uint64_t(e) * bytes_per_expert, cols, rows};
}

void matmul(std::span<const float> x, const WeightMatrix& w, std::span<float> out) {
  if (w.cols <= 0 || x.size() % size_t(w.cols) != 0 ||
      out.size() != x.size() / size_t(w.cols) * size_t(w.rows)) {
    throw std::invalid_argument(
        "matmul: x has " + std::to_string(x.size()) + " floats, out " + std::to_string(out.size()) +
        ", weight is " + std::to_string(w.rows) + " rows x " + std::to_string(w.cols) + " cols");
  }
  const size_t n_tokens = x.size() / size_t(w.cols);
  const size_t cols = size_t(w.cols);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    w.dequantize_row(r, row);
    for (size_t t = 0; t < n_tokens; ++t) {
      const float* xt = x.data() + t * cols;
      double acc = 0.0;
      for (size_t c = 0; c < cols; ++c) acc += double(xt[c]) * double(row[c]);
      out[t * size_t(w.rows) + size_t(r)] = float(acc);
    }
  }
}

void embedding(const WeightMatrix& table, std::span<const int32_t> ids, std::span<float> out) {
  if (out.size() != ids.size() * size_t(table.cols)) {
    throw std::invalid_argument("embedding: out has " + std::to_string(out.size()) +
                                " floats for " + std::to_string(ids.size()) + " ids of " +
                                std::to_string(table.cols));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= table.rows) {
      throw std::out_of_range("embedding: token id " + std::to_string(ids[i]) + " is not in [0, " +
                              std::to_string(table.rows) + ")");
    }
    table.dequantize_row(ids[i], out.subspan(i * size_t(table.cols), size_t(table.cols)));
  }
}

}  // namespace tessera::reference
