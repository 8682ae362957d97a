// Views of a ModelSpec's tensors as the scalar reference ops read them.
#pragma once

#include <vector>

#include "host/gguf/gguf.h"
#include "host/ops/reference/ffn.h"
#include "host/ops/reference/matmul.h"

namespace tessera::model {

reference::WeightMatrix as_matrix(const gguf::TensorInfo& t);
reference::ExpertMatrices as_experts(const gguf::TensorInfo& t);  // throws unless 3-D
std::vector<float> to_floats(const gguf::TensorInfo& t);          // whole tensor dequantized

}  // namespace tessera::model
