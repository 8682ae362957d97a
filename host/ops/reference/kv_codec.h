// Scalar reference of the KV row codecs (cl_kernels/kv_codec_<format>.clh): one token of one KV
// head encoded into a row of the format's bytes, and decoded back. f16 rounds to nearest even;
// q8_0 / q4_0 are ggml's blocks, through host/ops/quant's quantizers (bit-exact dequantization);
// TurboQuant rows through host/ops/reference/kv_turbo.h with the cache's seed (decoded rows are
// rotated back: the head vector the row stands for).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "host/kv/kv_format.h"
#include "host/ops/reference/kv_turbo.h"

namespace tessera::reference {

// Encodes head_dim = x.size() floats into row (kv_bytes_per_token_head(format, head_dim) bytes).
// Throws std::invalid_argument when the format cannot store head_dim or row has the wrong size.
void kv_encode_row(kv::KvFormat format, std::span<const float> x, std::span<uint8_t> row);
// Decodes a row into out (head_dim floats).
void kv_decode_row(kv::KvFormat format, std::span<const uint8_t> row, std::span<float> out);
// The row shape of a TurboQuant format at head_dim (its traits' widths and high channels).
turbo::RowShape kv_turbo_shape(kv::KvFormat format, size_t head_dim);
// The values a cache of `format` holds for x: rows of head_dim values encoded and decoded.
std::vector<float> kv_round_trip(kv::KvFormat format, std::span<const float> x, int head_dim);

}  // namespace tessera::reference
