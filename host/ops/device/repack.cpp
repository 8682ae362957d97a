// Splitting ggml blocks into body + head arrays for the matmul kernels, and the inverse for tests.
#include "host/ops/device/repack.h"

#include <array>
#include <cstring>
#include <string>

#include "host/common/error.h"

namespace tessera::ops {

namespace {

using gguf::TensorType;

// Offsets are those of host/ops/quant/blocks.h (ggml-common.h).
constexpr std::array<WeightFormat, 13> kFormats{{
    {TensorType::F32, 32, 128, 0, 0, "FMT_F32"},
    {TensorType::F16, 32, 64, 0, 0, "FMT_F16"},
    {TensorType::BF16, 32, 64, 0, 0, "FMT_BF16"},
    {TensorType::Q8_0, 32, 34, 0, 2, "FMT_Q8_0"},      // d | qs[32]
    {TensorType::Q4_0, 32, 18, 0, 2, "FMT_Q4_0"},      // d | qs[16]
    {TensorType::Q4_1, 32, 20, 0, 4, "FMT_Q4_1"},      // d m | qs[16]
    {TensorType::Q5_0, 32, 22, 0, 2, "FMT_Q5_0"},      // d | qh[4] qs[16]
    {TensorType::Q4_K, 256, 144, 0, 0, "FMT_Q4_K"},    // kept whole
    {TensorType::Q5_K, 256, 176, 0, 0, "FMT_Q5_K"},    // kept whole
    {TensorType::Q6_K, 256, 210, 208, 2, "FMT_Q6_K"},  // ql qh scales | d
    {TensorType::TQ1_0, 256, 54, 52, 2, "FMT_TQ1_0"},  // qs qh | d
    {TensorType::TQ2_0, 256, 66, 64, 2, "FMT_TQ2_0"},  // qs | d
    {TensorType::MXFP4, 32, 17, 0, 1, "FMT_MXFP4"},    // e | qs[16]
}};

bool is_plain(TensorType t) {
  return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
}

uint32_t elem_bytes(TensorType t) {
  return t == TensorType::F32 ? 4 : 2;
}

}  // namespace

const WeightFormat* weight_format(TensorType t) {
  for (const auto& f : kFormats)
    if (f.type == t) return &f;
  return nullptr;
}

const std::vector<TensorType>& matmul_types() {
  static const std::vector<TensorType> types = [] {
    std::vector<TensorType> v;
    v.reserve(kFormats.size());
    for (const auto& f : kFormats) v.push_back(f.type);
    return v;
  }();
  return types;
}

uint64_t ggml_bytes(TensorType t, int64_t rows, int64_t cols, int64_t n_mats) {
  const auto* tr = gguf::type_traits(t);
  if (!tr) throw TesseraError("matmul: unknown tensor type " + std::string(gguf::type_name(t)));
  return uint64_t(n_mats) * uint64_t(rows) * (uint64_t(cols) / tr->block_size) * tr->block_bytes;
}

RepackedWeight repack(TensorType t, int64_t rows, int64_t cols, const void* ggml_data,
                      int64_t n_mats) {
  const WeightFormat* f = weight_format(t);
  const std::string what = "matmul weight " + std::string(gguf::type_name(t)) + " [" +
                           std::to_string(n_mats) + " x " + std::to_string(rows) + " x " +
                           std::to_string(cols) + "]";
  if (!f) throw TesseraError(what + ": format not supported by the matmul kernels");
  if (rows <= 0 || cols <= 0 || n_mats <= 0) throw TesseraError(what + ": sizes must be positive");
  if (rows > int64_t(UINT32_MAX) || cols > int64_t(UINT32_MAX))
    throw TesseraError(what + ": dimension above 2^32");
  if (!is_plain(t) && cols % f->block_elems != 0)
    throw TesseraError(what + ": cols must be a multiple of the block size " +
                       std::to_string(f->block_elems));
  if (!ggml_data) throw TesseraError(what + ": no data");

  RepackedWeight w;
  w.format = f;
  w.rows = rows;
  w.cols = cols;
  w.n_mats = n_mats;
  w.blocks_per_row = (cols + f->block_elems - 1) / f->block_elems;
  w.source_bytes = ggml_bytes(t, rows, cols, n_mats);
  const uint64_t n_rows = uint64_t(n_mats) * uint64_t(rows);
  const uint64_t n_blocks = n_rows * uint64_t(w.blocks_per_row);
  const uint64_t body_total = n_blocks * f->body_bytes();
  w.head_offset_bytes = (body_total + 255) / 256 * 256;
  w.bytes.assign(w.head_offset_bytes + n_blocks * f->head_bytes, 0);
  const auto* src = static_cast<const uint8_t*>(ggml_data);

  if (is_plain(t)) {
    // Rows padded with zeros to whole chunks; the body is the row itself.
    const uint64_t src_row = uint64_t(cols) * elem_bytes(t);
    const uint64_t dst_row = uint64_t(w.blocks_per_row) * f->body_bytes();
    for (uint64_t r = 0; r < n_rows; ++r)
      std::memcpy(w.bytes.data() + r * dst_row, src + r * src_row, src_row);
    return w;
  }
  uint8_t* body = w.bytes.data();
  uint8_t* head = w.bytes.data() + w.head_offset_bytes;
  const uint32_t hb = f->head_bytes, ho = f->head_offset, bb = f->body_bytes();
  for (uint64_t i = 0; i < n_blocks; ++i) {
    const uint8_t* blk = src + i * f->block_bytes;
    uint8_t* b = body + i * bb;
    std::memcpy(b, blk, ho);                                       // before the head
    std::memcpy(b + ho, blk + ho + hb, f->block_bytes - ho - hb);  // after the head
    std::memcpy(head + i * hb, blk + ho, hb);
  }
  return w;
}

std::vector<uint8_t> unpack_row(const RepackedWeight& w, int64_t row) {
  const WeightFormat* f = w.format;
  if (!f || row < 0 || row >= w.rows * w.n_mats)
    throw TesseraError("matmul unpack_row: row " + std::to_string(row) + " out of range");
  if (is_plain(f->type)) {
    const uint64_t n = uint64_t(w.cols) * elem_bytes(f->type);
    const uint8_t* p = w.bytes.data() + uint64_t(row) * w.blocks_per_row * f->body_bytes();
    return {p, p + n};
  }
  std::vector<uint8_t> out(uint64_t(w.blocks_per_row) * f->block_bytes);
  const uint32_t hb = f->head_bytes, ho = f->head_offset, bb = f->body_bytes();
  for (int64_t b = 0; b < w.blocks_per_row; ++b) {
    const uint64_t i = uint64_t(row) * w.blocks_per_row + b;
    uint8_t* blk = out.data() + b * f->block_bytes;
    const uint8_t* body = w.bytes.data() + i * bb;
    std::memcpy(blk, body, ho);
    std::memcpy(blk + ho, w.bytes.data() + w.head_offset_bytes + i * hb, hb);
    std::memcpy(blk + ho + hb, body + ho, f->block_bytes - ho - hb);
  }
  return out;
}

}  // namespace tessera::ops
