// KV cache storage formats: what one token of one KV head costs in bytes, and the kernel macro that
// selects the format's load/store code in cl_kernels/attention*.cl. New formats (q8_0, TurboQuant)
// are added here as enum values with their own traits and kernel prelude.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace tessera::kv {

enum class KvFormat : uint8_t {
  kF16 = 0,  // IEEE half per element, written with vstore_half (no cl_khr_fp16 needed)
};

struct KvFormatTraits {
  std::string_view name;          // "f16"
  std::string_view kernel_macro;  // -D macro the attention programs are built with
  // Bytes of one token of one KV head (K or V alone) for `head_dim`; 0 when the format cannot store
  // that head size (e.g. a block format whose block does not divide head_dim).
  uint64_t (*bytes_per_token_head)(uint32_t head_dim);
};

namespace detail {
constexpr uint64_t f16_bytes(uint32_t head_dim) {
  return uint64_t(head_dim) * 2;
}
}  // namespace detail

// Traits of `format`; every enum value has an entry.
inline const KvFormatTraits& kv_format_traits(KvFormat format) {
  static constexpr KvFormatTraits kF16Traits{"f16", "KV_FORMAT_F16", &detail::f16_bytes};
  switch (format) {
    case KvFormat::kF16:
      return kF16Traits;
  }
  return kF16Traits;  // unreachable: the switch covers every value
}

inline std::string_view kv_format_name(KvFormat format) {
  return kv_format_traits(format).name;
}

// "f16" -> kF16; nullopt for names no format has.
inline std::optional<KvFormat> kv_format_from_name(std::string_view name) {
  if (name == "f16" || name == "F16") return KvFormat::kF16;
  return std::nullopt;
}

}  // namespace tessera::kv
