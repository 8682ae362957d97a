// KV cache storage formats: what one token of one KV head costs in bytes, and the kernel macro that
// selects the format's row codec (cl_kernels/kv_codec_<format>.clh) in cl_kernels/attention*.cl.
// K and V pools choose their formats separately; a new format adds an enum value, its traits here,
// a codec prelude and its scalar reference (host/ops/reference/kv_codec.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tessera::kv {

enum class KvFormat : uint8_t {
  kF16 = 0,   // IEEE half per element, written with vstore_half (no cl_khr_fp16 needed)
  kQ8_0 = 1,  // ggml block_q8_0 per 32 values: f16 scale d = amax / 127, 32 int8 round(x / d)
  kQ4_0 = 2,  // ggml block_q4_0 per 32 values: f16 scale d = signed max / -8, 16 bytes of nibbles
              // (value j in the low nibble of byte j, value j + 16 in its high nibble, offset 8)
};

struct KvFormatTraits {
  std::string_view name;          // "f16"
  std::string_view kernel_macro;  // value of K_FORMAT / V_FORMAT the attention programs are built
                                  // with (cl_kernels/attention_kv.clh defines it)
  uint32_t block_values;          // values per block: head_dim must be a multiple (1: any)
  uint32_t block_bytes;           // bytes of one block
};

// Traits of `format`; every enum value has an entry.
inline const KvFormatTraits& kv_format_traits(KvFormat format) {
  static constexpr KvFormatTraits kF16Traits{"f16", "KV_FMT_F16", 1, 2};
  static constexpr KvFormatTraits kQ8_0Traits{"q8_0", "KV_FMT_Q8_0", 32, 34};
  static constexpr KvFormatTraits kQ4_0Traits{"q4_0", "KV_FMT_Q4_0", 32, 18};
  switch (format) {
    case KvFormat::kF16:
      return kF16Traits;
    case KvFormat::kQ8_0:
      return kQ8_0Traits;
    case KvFormat::kQ4_0:
      return kQ4_0Traits;
  }
  return kF16Traits;  // unreachable: the switch covers every value
}

inline std::string_view kv_format_name(KvFormat format) {
  return kv_format_traits(format).name;
}

// Bytes of one token of one KV head (K or V alone) for `head_dim`; 0 when the format cannot store
// that head size (a block format whose block does not divide head_dim).
inline uint64_t kv_bytes_per_token_head(KvFormat format, uint32_t head_dim) {
  const KvFormatTraits& t = kv_format_traits(format);
  if (head_dim == 0 || head_dim % t.block_values != 0) return 0;
  return uint64_t(head_dim / t.block_values) * t.block_bytes;
}

// Why `format` cannot store head_dim ("" when it can): names the format, the head size and the
// block.
inline std::string kv_format_problem(KvFormat format, uint32_t head_dim) {
  if (kv_bytes_per_token_head(format, head_dim) != 0) return "";
  const KvFormatTraits& t = kv_format_traits(format);
  return "KV format " + std::string(t.name) + " cannot store head size " +
         std::to_string(head_dim) + " (its blocks hold " + std::to_string(t.block_values) +
         " values; the head size must be a multiple)";
}

// "f16" / "q8_0" / "q4_0" (any case) -> the format; nullopt for names no format has.
inline std::optional<KvFormat> kv_format_from_name(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  for (KvFormat f : {KvFormat::kF16, KvFormat::kQ8_0, KvFormat::kQ4_0})
    if (lower == kv_format_name(f)) return f;
  return std::nullopt;
}

// The names of every format, ", "-separated (for error messages).
inline std::string kv_format_names() {
  std::string s;
  for (KvFormat f : {KvFormat::kF16, KvFormat::kQ8_0, KvFormat::kQ4_0})
    s += (s.empty() ? "" : ", ") + std::string(kv_format_name(f));
  return s;
}

}  // namespace tessera::kv
