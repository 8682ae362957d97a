// Tensor views for the reference ops.
#include "host/model/weights.h"

#include <stdexcept>
#include <string>

namespace tessera::model {

reference::WeightMatrix as_matrix(const gguf::TensorInfo& t) {
  return reference::WeightMatrix{t.type, t.data, int64_t(t.dims[0]), int64_t(t.n_rows())};
}

reference::ExpertMatrices as_experts(const gguf::TensorInfo& t) {
  if (t.dims.size() != 3)
    throw std::invalid_argument("as_experts: tensor '" + t.name + "' is not 3-D");
  return reference::ExpertMatrices{t.type, t.data, int64_t(t.dims[0]), int64_t(t.dims[1]),
                                   int64_t(t.dims[2])};
}

std::vector<float> to_floats(const gguf::TensorInfo& t) {
  const reference::WeightMatrix m = as_matrix(t);
  std::vector<float> out(t.n_elements());
  for (int64_t r = 0; r < m.rows; ++r)
    m.dequantize_row(r, std::span<float>(out).subspan(size_t(r * m.cols), size_t(m.cols)));
  return out;
}

}  // namespace tessera::model
