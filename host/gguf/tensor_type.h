// ggml tensor types as numbered in GGUF files, with their block geometry. Header-only on purpose:
// the quant library uses these without linking the GGUF reader (the writer links the quant
// library).
#pragma once

#include <array>
#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "host/gguf/gguf_error.h"

namespace tessera::gguf {

// ggml's numbering (ggml.h, enum ggml_type); gaps are types ggml removed.
enum class TensorType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

// block_size elements are stored in block_bytes bytes (1 element per "block" for plain types).
struct TypeTraits {
  std::string_view name;
  uint32_t block_size;
  uint32_t block_bytes;
};

namespace detail {
struct TypeEntry {
  TensorType type;
  TypeTraits traits;
};
// Sizes are those static_assert'ed in ggml-common.h; every type a GGUF file may hold is listed so
// files with formats Tessera cannot compute still load and report what they hold.
inline constexpr std::array<TypeEntry, 32> kTypeTable{{
    {TensorType::F32, {"F32", 1, 4}},
    {TensorType::F16, {"F16", 1, 2}},
    {TensorType::Q4_0, {"Q4_0", 32, 18}},
    {TensorType::Q4_1, {"Q4_1", 32, 20}},
    {TensorType::Q5_0, {"Q5_0", 32, 22}},
    {TensorType::Q5_1, {"Q5_1", 32, 24}},
    {TensorType::Q8_0, {"Q8_0", 32, 34}},
    {TensorType::Q8_1, {"Q8_1", 32, 36}},
    {TensorType::Q2_K, {"Q2_K", 256, 84}},
    {TensorType::Q3_K, {"Q3_K", 256, 110}},
    {TensorType::Q4_K, {"Q4_K", 256, 144}},
    {TensorType::Q5_K, {"Q5_K", 256, 176}},
    {TensorType::Q6_K, {"Q6_K", 256, 210}},
    {TensorType::Q8_K, {"Q8_K", 256, 292}},
    {TensorType::IQ2_XXS, {"IQ2_XXS", 256, 66}},
    {TensorType::IQ2_XS, {"IQ2_XS", 256, 74}},
    {TensorType::IQ3_XXS, {"IQ3_XXS", 256, 98}},
    {TensorType::IQ1_S, {"IQ1_S", 256, 50}},
    {TensorType::IQ4_NL, {"IQ4_NL", 32, 18}},
    {TensorType::IQ3_S, {"IQ3_S", 256, 110}},
    {TensorType::IQ2_S, {"IQ2_S", 256, 82}},
    {TensorType::IQ4_XS, {"IQ4_XS", 256, 136}},
    {TensorType::I8, {"I8", 1, 1}},
    {TensorType::I16, {"I16", 1, 2}},
    {TensorType::I32, {"I32", 1, 4}},
    {TensorType::I64, {"I64", 1, 8}},
    {TensorType::F64, {"F64", 1, 8}},
    {TensorType::IQ1_M, {"IQ1_M", 256, 56}},
    {TensorType::BF16, {"BF16", 1, 2}},
    {TensorType::TQ1_0, {"TQ1_0", 256, 54}},
    {TensorType::TQ2_0, {"TQ2_0", 256, 66}},
    {TensorType::MXFP4, {"MXFP4", 32, 17}},
}};
}  // namespace detail

// nullptr when the number is not a type Tessera knows (the reader rejects such tensors).
inline const TypeTraits* type_traits(TensorType t) {
  for (const auto& e : detail::kTypeTable)
    if (e.type == t) return &e.traits;
  return nullptr;
}

// "Q4_K", or "unknown(99)" for a number outside the table (the view stays valid for the program's
// life; numbers from 64 up all read "unknown(>=64)").
inline std::string_view type_name(TensorType t) {
  if (const TypeTraits* tr = type_traits(t)) return tr->name;
  static const std::array<std::string, 64> kUnknown = [] {
    std::array<std::string, 64> names;
    for (size_t i = 0; i < names.size(); ++i) names[i] = "unknown(" + std::to_string(i) + ")";
    return names;
  }();
  const auto n = static_cast<uint32_t>(t);
  return n < kUnknown.size() ? std::string_view(kUnknown[n]) : std::string_view("unknown(>=64)");
}

// Case-insensitive: "q4_k" and "Q4_K" both give Q4_K.
inline std::optional<TensorType> type_from_name(std::string_view name) {
  for (const auto& e : detail::kTypeTable) {
    if (e.traits.name.size() != name.size()) continue;
    bool same = true;
    for (size_t i = 0; i < name.size() && same; ++i)
      same = std::toupper(static_cast<unsigned char>(name[i])) == e.traits.name[i];
    if (same) return e.type;
  }
  return std::nullopt;
}

// Bytes of n consecutive elements; throws GgufError when the type is unknown, n is not a multiple
// of the block size, or the size overflows 64 bits.
inline uint64_t row_bytes(TensorType t, uint64_t n) {
  const TypeTraits* tr = type_traits(t);
  if (!tr) throw GgufError("row_bytes: unknown tensor type " + std::string(type_name(t)));
  if (n % tr->block_size != 0)
    throw GgufError("row_bytes: " + std::to_string(n) + " elements of " + std::string(tr->name) +
                    " is not a multiple of its block size " + std::to_string(tr->block_size));
  const uint64_t blocks = n / tr->block_size;
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(blocks, uint64_t{tr->block_bytes}, &bytes))
    throw GgufError("row_bytes: " + std::to_string(n) + " elements of " + std::string(tr->name) +
                    " overflow 64 bits");
  return bytes;
}

}  // namespace tessera::gguf
