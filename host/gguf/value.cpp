// Metadata values (typed access, factories, comparison) and tensor-info size arithmetic.
#include <bit>
#include <limits>

#include "host/gguf/gguf.h"

namespace tessera::gguf {

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
      return "UINT8";
    case ValueType::INT8:
      return "INT8";
    case ValueType::UINT16:
      return "UINT16";
    case ValueType::INT16:
      return "INT16";
    case ValueType::UINT32:
      return "UINT32";
    case ValueType::INT32:
      return "INT32";
    case ValueType::FLOAT32:
      return "FLOAT32";
    case ValueType::BOOL:
      return "BOOL";
    case ValueType::STRING:
      return "STRING";
    case ValueType::ARRAY:
      return "ARRAY";
    case ValueType::UINT64:
      return "UINT64";
    case ValueType::INT64:
      return "INT64";
    case ValueType::FLOAT64:
      return "FLOAT64";
  }
  return "unknown";
}

namespace {

[[noreturn]] void mismatch(const Value& val, std::string_view wanted) {
  std::string what =
      val.key.empty() ? std::string("metadata value") : "metadata key '" + val.key + "'";
  throw GgufError(what + ": expected " + std::string(wanted) + ", found " +
                  std::string(value_type_name(val.type)));
}

}  // namespace

bool Value::is_integer() const {
  return std::holds_alternative<uint64_t>(v) || std::holds_alternative<int64_t>(v);
}

uint64_t Value::as_uint() const {
  if (const auto* u = std::get_if<uint64_t>(&v)) return *u;
  if (const auto* i = std::get_if<int64_t>(&v)) {
    if (*i >= 0) return static_cast<uint64_t>(*i);
    throw GgufError((key.empty() ? std::string("metadata value") : "metadata key '" + key + "'") +
                    ": expected an unsigned integer, found negative " + std::to_string(*i));
  }
  mismatch(*this, "an unsigned integer");
}

int64_t Value::as_int() const {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&v)) {
    if (*u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return static_cast<int64_t>(*u);
    throw GgufError((key.empty() ? std::string("metadata value") : "metadata key '" + key + "'") +
                    ": value " + std::to_string(*u) + " does not fit a signed 64-bit integer");
  }
  mismatch(*this, "an integer");
}

double Value::as_float() const {
  if (const auto* d = std::get_if<double>(&v)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&v)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  mismatch(*this, "a number");
}

bool Value::as_bool() const {
  if (const auto* b = std::get_if<bool>(&v)) return *b;
  mismatch(*this, "BOOL");
}

const std::string& Value::as_string() const {
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  mismatch(*this, "STRING");
}

const std::vector<Value>& Value::as_array() const {
  if (const auto* a = std::get_if<std::vector<Value>>(&v)) return *a;
  mismatch(*this, "ARRAY");
}

namespace {
Value make(ValueType t, decltype(Value::v) v) {
  Value out;
  out.type = t;
  out.v = std::move(v);
  return out;
}
}  // namespace

Value Value::u8(uint8_t x) {
  return make(ValueType::UINT8, uint64_t{x});
}
Value Value::i8(int8_t x) {
  return make(ValueType::INT8, int64_t{x});
}
Value Value::u16(uint16_t x) {
  return make(ValueType::UINT16, uint64_t{x});
}
Value Value::i16(int16_t x) {
  return make(ValueType::INT16, int64_t{x});
}
Value Value::u32(uint32_t x) {
  return make(ValueType::UINT32, uint64_t{x});
}
Value Value::i32(int32_t x) {
  return make(ValueType::INT32, int64_t{x});
}
Value Value::u64(uint64_t x) {
  return make(ValueType::UINT64, x);
}
Value Value::i64(int64_t x) {
  return make(ValueType::INT64, x);
}
Value Value::f32(float x) {
  return make(ValueType::FLOAT32, static_cast<double>(x));
}
Value Value::f64(double x) {
  return make(ValueType::FLOAT64, x);
}
Value Value::boolean(bool x) {
  return make(ValueType::BOOL, x);
}
Value Value::string(std::string s) {
  return make(ValueType::STRING, std::move(s));
}

Value Value::array(ValueType elem, std::vector<Value> elems) {
  Value out = make(ValueType::ARRAY, std::move(elems));
  out.array_type = elem;
  return out;
}

Value Value::strings(const std::vector<std::string>& xs) {
  std::vector<Value> elems;
  elems.reserve(xs.size());
  for (const auto& x : xs) elems.push_back(string(x));
  return array(ValueType::STRING, std::move(elems));
}

Value Value::f32s(const std::vector<float>& xs) {
  std::vector<Value> elems;
  elems.reserve(xs.size());
  for (float x : xs) elems.push_back(f32(x));
  return array(ValueType::FLOAT32, std::move(elems));
}

Value Value::i32s(const std::vector<int32_t>& xs) {
  std::vector<Value> elems;
  elems.reserve(xs.size());
  for (int32_t x : xs) elems.push_back(i32(x));
  return array(ValueType::INT32, std::move(elems));
}

Value Value::u32s(const std::vector<uint32_t>& xs) {
  std::vector<Value> elems;
  elems.reserve(xs.size());
  for (uint32_t x : xs) elems.push_back(u32(x));
  return array(ValueType::UINT32, std::move(elems));
}

bool Value::operator==(const Value& o) const {
  if (type != o.type) return false;
  if (type == ValueType::ARRAY && array_type != o.array_type) return false;
  // Compare doubles by bits so NaN round-trips compare equal and -0 differs from +0.
  const auto* a = std::get_if<double>(&v);
  const auto* b = std::get_if<double>(&o.v);
  if (a && b) return std::bit_cast<uint64_t>(*a) == std::bit_cast<uint64_t>(*b);
  return v == o.v;
}

uint64_t TensorInfo::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims)
    if (__builtin_mul_overflow(n, d, &n))
      throw GgufError("tensor '" + name + "': element count overflows 64 bits");
  return n;
}

uint64_t TensorInfo::n_bytes() const {
  if (dims.empty()) return 0;
  const uint64_t row = row_bytes(type, dims[0]);
  uint64_t bytes = row;
  for (size_t i = 1; i < dims.size(); ++i)
    if (__builtin_mul_overflow(bytes, dims[i], &bytes))
      throw GgufError("tensor '" + name + "': byte size overflows 64 bits");
  return bytes;
}

uint64_t TensorInfo::n_rows() const {
  if (dims.empty() || dims[0] == 0) return 0;
  return n_elements() / dims[0];
}

}  // namespace tessera::gguf
