// A writer-made GGUF file holding every metadata value type, nested arrays and tensors of several
// types: shared by the round-trip, error and fuzz tests.
#pragma once

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "host/gguf/gguf.h"

namespace tessera::gguf::testing {

inline GgufWriter make_fixture_writer(uint64_t alignment = 32) {
  GgufWriter w(alignment);
  w.set("general.architecture", Value::string("llama"));
  w.set("test.u8", Value::u8(200));
  w.set("test.i8", Value::i8(-100));
  w.set("test.u16", Value::u16(60000));
  w.set("test.i16", Value::i16(-30000));
  w.set("test.u32", Value::u32(4000000000u));
  w.set("test.i32", Value::i32(-2000000000));
  w.set("test.u64", Value::u64(0xfedcba9876543210ull));
  w.set("test.i64", Value::i64(-0x123456789abcdefll));
  w.set("test.f32", Value::f32(0.1f));
  w.set("test.f64", Value::f64(-1e300));
  w.set("test.bool_true", Value::boolean(true));
  w.set("test.bool_false", Value::boolean(false));
  w.set("test.string", Value::string("h\xc3\xa9llo\n\0x"));
  w.set("test.empty_string", Value::string(""));
  w.set("test.strings", Value::strings({"<unk>", "", "a b", std::string("\0z", 2)}));
  w.set("test.f32s", Value::f32s({1.5f, -0.0f, INFINITY}));
  w.set("test.i32s", Value::i32s({-1, 0, 7}));
  w.set("test.empty_array", Value::array(ValueType::UINT64, {}));
  w.set("test.bools", Value::array(ValueType::BOOL, {Value::boolean(true), Value::boolean(false)}));
  w.set("test.nested",
        Value::array(ValueType::ARRAY, {Value::strings({"x", "yz"}), Value::i32s({}),
                                        Value::array(ValueType::ARRAY, {Value::f32s({2.0f})})}));
  std::vector<float> a(64 * 3), b(32 * 2), c(16);
  for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(0.1f * static_cast<float>(i));
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i) * 0.25f - 3.0f;
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<float>(i);
  w.add_tensor_f32("token_embd.weight", {64, 3}, a);
  w.add_tensor_f32("blk.0.attn_q.weight", {32, 2}, b, TensorType::F16);
  w.add_tensor_f32("blk.0.ffn_up.weight", {16}, c, TensorType::BF16);
  std::vector<uint8_t> q8(34 * 2);  // two Q8_0 blocks: scale 1.0 (fp16 0x3c00), quants 0..31
  for (int blk = 0; blk < 2; ++blk) {
    q8[34 * blk] = 0x00;
    q8[34 * blk + 1] = 0x3c;
    for (int i = 0; i < 32; ++i) q8[34 * blk + 2 + i] = static_cast<uint8_t>(i - 16 * blk);
  }
  w.add_tensor("blk.0.attn_k.weight", TensorType::Q8_0, {32, 1, 2, 1}, q8);
  std::vector<uint8_t> ids(4 * 5);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint8_t>(i * 7);
  w.add_tensor("ids", TensorType::I32, {5}, ids);
  return w;
}

// Index of the first occurrence of `needle` in `hay` (the test fails via a huge value if absent).
inline size_t find_bytes(const std::vector<uint8_t>& hay, const std::string& needle) {
  for (size_t i = 0; i + needle.size() <= hay.size(); ++i)
    if (std::memcmp(hay.data() + i, needle.data(), needle.size()) == 0) return i;
  return static_cast<size_t>(-1);
}

template <typename T>
void poke(std::vector<uint8_t>& bytes, size_t at, T value) {
  std::memcpy(bytes.data() + at, &value, sizeof(T));
}

}  // namespace tessera::gguf::testing
