// KV cache storage formats: what one token of one KV head costs in bytes, and the kernel macro that
// selects the format's row codec (cl_kernels/kv_codec_<format>.clh) in cl_kernels/attention*.cl.
// K and V pools choose their formats separately; a new format adds an enum value, its traits here,
// a codec prelude and its scalar reference (host/ops/reference/kv_codec.h).
//
// TurboQuant rows (Zandieh et al., ICLR 2026; cl_kernels/kv_codec_turbo.clh, scalar reference
// host/ops/reference/kv_turbo.h): the head vector's norm (f16), then each coordinate of the
// vector rotated by a seeded randomized Walsh-Hadamard transform as the index of a Lloyd-Max
// centroid (b bits; cl_kernels/kv_turbo_tables.clh), packed 8 coordinates in b bytes, rows padded
// to an even size. The split formats keep a fixed quarter of the rotated channels (the first
// head_dim / 4, as the paper's 32 of 128) at the higher width: turbo2.5 stores 3 + 2 bits (2.25
// bits per channel), turbo3.5 4 + 3 bits (3.25), under the paper's names.
//
// TurboQuant prod rows (keys only; the paper's TurboQuant_prod): b - 1 bit mse codes of the unit
// vector plus a 1-bit QJL sketch sign(S r) of the residual r = R x - its mse reconstruction (S a
// seeded d x d Gaussian matrix), so <q, k> is estimated without bias:
//   |x| / sqrt(d) <R q, c> + sqrt(pi / 2) / d |r| <S R q, signs>.
// Row: f16 norm, the mse codes packed as above, d / 8 bytes of signs (bit j of byte j / 8 set when
// (S r)_j < 0), the f16 residual norm |r| (absolute, at the row's scale), padded to an even size.
// turbo3p stores 2 + 1 bits per channel, turbo4p 3 + 1. Values are summed, not multiplied by a
// query, so V rows never take a prod format (kv_format_part_problem).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tessera::kv {

enum class KvFormat : uint8_t {
  kF16 = 0,     // IEEE half per element, written with vstore_half (no cl_khr_fp16 needed)
  kQ8_0 = 1,    // ggml block_q8_0 per 32 values: f16 scale d = amax / 127, 32 int8 round(x / d)
  kQ4_0 = 2,    // ggml block_q4_0 per 32 values: f16 scale d = signed max / -8, 16 bytes of nibbles
                // (value j in the low nibble of byte j, value j + 16 in its high nibble, offset 8)
  kTurbo2 = 3,  // TurboQuant mse, 2 bits per rotated coordinate
  kTurbo3 = 4,  // 3 bits
  kTurbo4 = 5,  // 4 bits
  kTurbo2_5 = 6,  // head_dim / 4 rotated channels at 3 bits, the rest at 2
  kTurbo3_5 = 7,  // head_dim / 4 rotated channels at 4 bits, the rest at 3
  kTurbo3p = 8,   // TurboQuant prod (keys): 2-bit mse + 1-bit QJL sketch of the residual
  kTurbo4p = 9,   // 3-bit mse + 1-bit QJL sketch
};

inline constexpr KvFormat kAllKvFormats[] = {
    KvFormat::kF16,    KvFormat::kQ8_0,   KvFormat::kQ4_0,     KvFormat::kTurbo2,
    KvFormat::kTurbo3, KvFormat::kTurbo4, KvFormat::kTurbo2_5, KvFormat::kTurbo3_5,
    KvFormat::kTurbo3p, KvFormat::kTurbo4p};

struct KvFormatTraits {
  std::string_view name;          // "f16"
  std::string_view kernel_macro;  // value of K_FORMAT / V_FORMAT the attention programs are built
                                  // with (cl_kernels/attention_kv.clh defines it)
  uint32_t block_values;          // values per block: head_dim must be a multiple (1: any);
                                  // TurboQuant: the multiple its packing needs (8, split 32)
  uint32_t block_bytes;           // bytes of one block (TurboQuant: 0, see turbo_*_bits)
  uint32_t turbo_hi_bits = 0;     // TurboQuant: bits of the first head_dim / 4 channels when they
  uint32_t turbo_lo_bits = 0;     // differ from the rest's (split), else both the format's width
                                  // (prod: the mse part's width, one less than the format's)
  bool turbo_prod = false;        // TurboQuant prod: a QJL sketch follows the mse codes (K only)
  bool turbo() const { return turbo_lo_bits != 0; }
};

// Traits of `format`; every enum value has an entry.
inline const KvFormatTraits& kv_format_traits(KvFormat format) {
  static constexpr KvFormatTraits kF16Traits{"f16", "KV_FMT_F16", 1, 2};
  static constexpr KvFormatTraits kQ8_0Traits{"q8_0", "KV_FMT_Q8_0", 32, 34};
  static constexpr KvFormatTraits kQ4_0Traits{"q4_0", "KV_FMT_Q4_0", 32, 18};
  static constexpr KvFormatTraits kTurbo2Traits{"turbo2", "KV_FMT_TURBO2", 8, 0, 2, 2};
  static constexpr KvFormatTraits kTurbo3Traits{"turbo3", "KV_FMT_TURBO3", 8, 0, 3, 3};
  static constexpr KvFormatTraits kTurbo4Traits{"turbo4", "KV_FMT_TURBO4", 8, 0, 4, 4};
  static constexpr KvFormatTraits kTurbo2_5Traits{"turbo2.5", "KV_FMT_TURBO2_5", 32, 0, 3, 2};
  static constexpr KvFormatTraits kTurbo3_5Traits{"turbo3.5", "KV_FMT_TURBO3_5", 32, 0, 4, 3};
  static constexpr KvFormatTraits kTurbo3pTraits{"turbo3p", "KV_FMT_TURBO3P", 8, 0, 2, 2, true};
  static constexpr KvFormatTraits kTurbo4pTraits{"turbo4p", "KV_FMT_TURBO4P", 8, 0, 3, 3, true};
  switch (format) {
    case KvFormat::kF16:
      return kF16Traits;
    case KvFormat::kQ8_0:
      return kQ8_0Traits;
    case KvFormat::kQ4_0:
      return kQ4_0Traits;
    case KvFormat::kTurbo2:
      return kTurbo2Traits;
    case KvFormat::kTurbo3:
      return kTurbo3Traits;
    case KvFormat::kTurbo4:
      return kTurbo4Traits;
    case KvFormat::kTurbo2_5:
      return kTurbo2_5Traits;
    case KvFormat::kTurbo3_5:
      return kTurbo3_5Traits;
    case KvFormat::kTurbo3p:
      return kTurbo3pTraits;
    case KvFormat::kTurbo4p:
      return kTurbo4pTraits;
  }
  return kF16Traits;  // unreachable: the switch covers every value
}

inline std::string_view kv_format_name(KvFormat format) {
  return kv_format_traits(format).name;
}

// TurboQuant: rotated channels [0, turbo_hi_channels) use turbo_hi_bits, the rest turbo_lo_bits.
inline uint32_t kv_turbo_hi_channels(const KvFormatTraits& t, uint32_t head_dim) {
  return t.turbo_hi_bits != t.turbo_lo_bits ? head_dim / 4 : 0;
}

// Bytes of one token of one KV head (K or V alone) for `head_dim`; 0 when the format cannot store
// that head size (a block format whose block does not divide head_dim).
inline uint64_t kv_bytes_per_token_head(KvFormat format, uint32_t head_dim) {
  const KvFormatTraits& t = kv_format_traits(format);
  if (head_dim == 0 || head_dim % t.block_values != 0) return 0;
  if (t.turbo()) {  // f16 norm + packed codes, padded to an even size (the norm stays aligned)
    const uint32_t hi = kv_turbo_hi_channels(t, head_dim);
    uint64_t code_bytes =
        (uint64_t(hi) * t.turbo_hi_bits + uint64_t(head_dim - hi) * t.turbo_lo_bits) / 8;
    if (t.turbo_prod) code_bytes += head_dim / 8 + 2;  // signs, f16 residual norm
    return 2 + (code_bytes + 1) / 2 * 2;
  }
  return uint64_t(head_dim / t.block_values) * t.block_bytes;
}

// Why `format` cannot store head_dim ("" when it can): names the format, the head size and the
// block.
inline std::string kv_format_problem(KvFormat format, uint32_t head_dim) {
  if (kv_bytes_per_token_head(format, head_dim) != 0) return "";
  const KvFormatTraits& t = kv_format_traits(format);
  return "KV format " + std::string(t.name) + " cannot store head size " +
         std::to_string(head_dim) + " (its " +
         (t.turbo() ? "packed codes come in groups of " : "blocks hold ") +
         std::to_string(t.block_values) + " values; the head size must be a multiple)";
}

// Why `format` cannot be the format of the V pool ("" when it can): prod formats estimate inner
// products with a query; values are summed with weights, which their sketch cannot serve.
inline std::string kv_format_value_problem(KvFormat format) {
  if (!kv_format_traits(format).turbo_prod) return "";
  const std::string name(kv_format_traits(format).name);
  return "KV format " + name +
         " is a key-only format (its QJL sketch estimates inner products with a query); values "
         "take an mse or block format (turbo" +
         std::to_string(kv_format_traits(format).turbo_lo_bits + 1) + ", q8_0, f16, ...)";
}

// "f16" / "q8_0" / "turbo3.5" ... (any case) -> the format; nullopt for names no format has.
inline std::optional<KvFormat> kv_format_from_name(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  for (KvFormat f : kAllKvFormats)
    if (lower == kv_format_name(f)) return f;
  return std::nullopt;
}

// The names of every format, ", "-separated (for error messages).
inline std::string kv_format_names() {
  std::string s;
  for (KvFormat f : kAllKvFormats) s += (s.empty() ? "" : ", ") + std::string(kv_format_name(f));
  return s;
}

}  // namespace tessera::kv
