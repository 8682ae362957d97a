// Scalar KV row codecs: the format's row through host/ops/quant (F16, Q8_0 and Q4_0 rows are
// exactly ggml's rows of those types) or TurboQuant's reference (host/ops/reference/kv_turbo.h).
#include "host/ops/reference/kv_codec.h"

#include <stdexcept>
#include <string>

#include "host/ops/quant/quant.h"
#include "host/ops/reference/kv_turbo.h"

namespace tessera::reference {

namespace {

gguf::TensorType tensor_type(kv::KvFormat format) {
  switch (format) {
    case kv::KvFormat::kF16:
      return gguf::TensorType::F16;
    case kv::KvFormat::kQ8_0:
      return gguf::TensorType::Q8_0;
    case kv::KvFormat::kQ4_0:
      return gguf::TensorType::Q4_0;
    default:
      break;
  }
  throw std::invalid_argument("kv codec: " + std::string(kv::kv_format_name(format)) +
                              " is not a tensor type");
}

void check(kv::KvFormat format, size_t head_dim, size_t row_bytes, const char* what) {
  if (const std::string why = kv::kv_format_problem(format, uint32_t(head_dim)); !why.empty())
    throw std::invalid_argument(std::string(what) + ": " + why);
  const uint64_t want = kv::kv_bytes_per_token_head(format, uint32_t(head_dim));
  if (row_bytes != want)
    throw std::invalid_argument(std::string(what) + ": a " +
                                std::string(kv::kv_format_name(format)) + " row of head size " +
                                std::to_string(head_dim) + " has " + std::to_string(want) +
                                " bytes, got " + std::to_string(row_bytes));
}

}  // namespace

turbo::RowShape kv_turbo_shape(kv::KvFormat format, size_t head_dim) {
  const kv::KvFormatTraits& t = kv::kv_format_traits(format);
  return {uint32_t(head_dim), t.turbo_hi_bits, t.turbo_lo_bits,
          kv::kv_turbo_hi_channels(t, uint32_t(head_dim)), t.turbo_prod};
}

void kv_encode_row(kv::KvFormat format, std::span<const float> x, std::span<uint8_t> row) {
  check(format, x.size(), row.size(), "kv_encode_row");
  if (kv::kv_format_traits(format).turbo()) {
    turbo::encode_row(kv_turbo_shape(format, x.size()), x, row, turbo::default_seed());
    return;
  }
  quant::quantize_row(tensor_type(format), x.data(), row.data(), int64_t(x.size()));
}

void kv_decode_row(kv::KvFormat format, std::span<const uint8_t> row, std::span<float> out) {
  check(format, out.size(), row.size(), "kv_decode_row");
  if (kv::kv_format_traits(format).turbo()) {
    turbo::decode_row(kv_turbo_shape(format, out.size()), row, out, turbo::default_seed());
    return;
  }
  quant::dequantize_row(tensor_type(format), row.data(), out.data(), int64_t(out.size()));
}

std::vector<float> kv_round_trip(kv::KvFormat format, std::span<const float> x, int head_dim) {
  if (head_dim <= 0 || x.size() % size_t(head_dim) != 0)
    throw std::invalid_argument("kv_round_trip: " + std::to_string(x.size()) +
                                " values are not rows of head size " + std::to_string(head_dim));
  std::vector<uint8_t> row(kv::kv_bytes_per_token_head(format, uint32_t(head_dim)));
  std::vector<float> out(x.size());
  for (size_t r = 0; r < x.size() / size_t(head_dim); ++r) {
    kv_encode_row(format, x.subspan(r * size_t(head_dim), size_t(head_dim)), row);
    kv_decode_row(format, row,
                  std::span<float>(out).subspan(r * size_t(head_dim), size_t(head_dim)));
  }
  return out;
}

}  // namespace tessera::reference
