// Device embedding lookup (cl_kernels/embed.cl) from tables in ggml block formats.
#pragma once

#include <cstdint>
#include <map>

#include "devices/device.h"
#include "host/gguf/tensor_type.h"
#include "host/ops/device/launch.h"

namespace tessera::ops {

// A token-embedding table on the device, ggml layout: n_rows rows of `cols` elements in `type`,
// each gguf::row_bytes(type, cols) bytes, back to back from byte offset `offset` of `mem`.
struct DeviceTable {
  cl_mem mem = nullptr;
  uint64_t offset = 0;
  gguf::TensorType type = gguf::TensorType::F32;
  uint32_t cols = 0;
  uint32_t n_rows = 0;
};

// One per device and user thread: launches set kernel arguments, so calls must not overlap.
class EmbeddingOps {
 public:
  explicit EmbeddingOps(const Device& device);

  // F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K.
  static bool supports(gguf::TensorType type);

  // out[t][cols] (f32, from element offset out_off) = dequantized row ids[ids_off + t] of table,
  // for n_tokens tokens. An id outside [0, n_rows) yields a row of NaNs (ids live on the device;
  // the host cannot check them without a round trip). Throws std::invalid_argument for an
  // unsupported type or cols that are not whole blocks.
  void lookup(const DeviceTable& table, cl_mem ids, uint32_t ids_off, uint32_t n_tokens, cl_mem out,
              uint32_t out_off, const Events& ev = {});

 private:
  const Device* device_;
  std::map<gguf::TensorType, ClKernel> kernels_;
};

}  // namespace tessera::ops
