// Repacking of ggml weight blocks into the matmul kernels' device layout (cl_kernels/
// matmul_formats.clh): each block split into an aligned body and a head of fp16 scales.
#pragma once

#include <cstdint>
#include <vector>

#include "host/gguf/tensor_type.h"

namespace tessera::ops {

// How one format is split. ggml's blocks are 17, 18, 20, 22, 34, 54, 66, 210 bytes: the scale
// field(s) at `head_offset` (fp16; MXFP4's one exponent byte) move to a separate array so the rest
// (the body) is 4- or 16-byte aligned and quants load as uint / uint4. Q4_K/Q5_K blocks (144/176
// bytes) are aligned already: no head. F32/F16/BF16 rows are zero-padded to whole 32-element chunks
// ("blocks" of 32 elements).
struct WeightFormat {
  gguf::TensorType type;
  uint32_t block_elems;  // elements per (repacked) block: 32 or 256
  uint32_t block_bytes;  // bytes of one ggml block (F types: 32 elements' worth)
  uint32_t head_offset;  // where the moved scale bytes sit inside the ggml block
  uint32_t head_bytes;   // 0: no head array
  uint32_t body_bytes() const { return block_bytes - head_bytes; }
  const char* macro;  // "FMT_Q4_0": selects the decoder in matmul_formats.clh
};

// The formats the matmul kernels compute; nullptr for anything else.
const WeightFormat* weight_format(gguf::TensorType t);
// All of them, in a stable order (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K, TQ1_0,
// TQ2_0, MXFP4).
const std::vector<gguf::TensorType>& matmul_types();

// A repacked weight on the host: `n_mats` matrices of rows x cols, bodies then heads.
struct RepackedWeight {
  const WeightFormat* format = nullptr;
  int64_t rows = 0, cols = 0, n_mats = 1;
  int64_t blocks_per_row = 0;      // after padding for F types
  std::vector<uint8_t> bytes;      // body array at 0, head array at head_offset_bytes
  uint64_t head_offset_bytes = 0;  // 256-byte aligned (any device's base-address alignment)
  uint64_t source_bytes = 0;       // bytes of the ggml data (what a GEMV must stream)
};

// Bytes of a ggml tensor of `n_mats` x rows x cols in type t (rows of ggml blocks).
uint64_t ggml_bytes(gguf::TensorType t, int64_t rows, int64_t cols, int64_t n_mats = 1);

// Repacks ggml blocks (`n_mats` * rows rows of row_bytes(t, cols) each) into the device layout.
// Throws TesseraError naming the problem for an unsupported type, non-positive sizes, or cols not a
// multiple of the block size.
RepackedWeight repack(gguf::TensorType t, int64_t rows, int64_t cols, const void* ggml_data,
                      int64_t n_mats = 1);

// The inverse: ggml blocks of row `row` (0 .. n_mats * rows - 1) rebuilt from the repacked layout.
// F types come back without their padding. Used to test that repacking loses nothing.
std::vector<uint8_t> unpack_row(const RepackedWeight& w, int64_t row);

}  // namespace tessera::ops
