// GGUF v3 writer: serializes metadata and tensors in ggml's layout (tensor data aligned to
// general.alignment, default 32), checking what it is given so fixtures are always valid files.
#include <cstring>
#include <fstream>
#include <set>

#include "host/gguf/gguf.h"
#include "host/ops/quant/quant.h"

namespace tessera::gguf {

namespace {

class ByteSink {
 public:
  std::vector<uint8_t> out;
  template <typename T>
  void put(T x) {
    const size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &x, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    out.insert(out.end(), s.begin(), s.end());
  }
  void pad_to(uint64_t alignment) {
    while (out.size() % alignment != 0) out.push_back(0);
  }
};

[[noreturn]] void bad_value(const std::string& key, const std::string& problem) {
  throw GgufError("GgufWriter: metadata key '" + key + "': " + problem);
}

// Writes the payload of v (its type tag is written by the caller).
void put_value(ByteSink& sink, const Value& v, const std::string& key) {
  auto uint = [&](uint64_t max) {
    const auto* u = std::get_if<uint64_t>(&v.v);
    if (!u)
      bad_value(key,
                std::string(value_type_name(v.type)) + " value does not hold an unsigned integer");
    if (*u > max)
      bad_value(key, "value " + std::to_string(*u) + " does not fit " +
                         std::string(value_type_name(v.type)));
    return *u;
  };
  auto sint = [&](int64_t lo, int64_t hi) {
    const auto* i = std::get_if<int64_t>(&v.v);
    if (!i)
      bad_value(key,
                std::string(value_type_name(v.type)) + " value does not hold a signed integer");
    if (*i < lo || *i > hi)
      bad_value(key, "value " + std::to_string(*i) + " does not fit " +
                         std::string(value_type_name(v.type)));
    return *i;
  };
  auto real = [&] {
    const auto* d = std::get_if<double>(&v.v);
    if (!d) bad_value(key, std::string(value_type_name(v.type)) + " value does not hold a float");
    return *d;
  };
  switch (v.type) {
    case ValueType::UINT8:
      sink.put<uint8_t>(static_cast<uint8_t>(uint(0xff)));
      return;
    case ValueType::INT8:
      sink.put<int8_t>(static_cast<int8_t>(sint(-128, 127)));
      return;
    case ValueType::UINT16:
      sink.put<uint16_t>(static_cast<uint16_t>(uint(0xffff)));
      return;
    case ValueType::INT16:
      sink.put<int16_t>(static_cast<int16_t>(sint(-32768, 32767)));
      return;
    case ValueType::UINT32:
      sink.put<uint32_t>(static_cast<uint32_t>(uint(0xffffffffu)));
      return;
    case ValueType::INT32:
      sink.put<int32_t>(static_cast<int32_t>(sint(INT32_MIN, INT32_MAX)));
      return;
    case ValueType::UINT64:
      sink.put<uint64_t>(uint(UINT64_MAX));
      return;
    case ValueType::INT64:
      sink.put<int64_t>(sint(INT64_MIN, INT64_MAX));
      return;
    case ValueType::FLOAT32:
      sink.put<float>(static_cast<float>(real()));
      return;
    case ValueType::FLOAT64:
      sink.put<double>(real());
      return;
    case ValueType::BOOL: {
      const auto* b = std::get_if<bool>(&v.v);
      if (!b) bad_value(key, "BOOL value does not hold a bool");
      sink.put<uint8_t>(*b ? 1 : 0);
      return;
    }
    case ValueType::STRING: {
      const auto* s = std::get_if<std::string>(&v.v);
      if (!s) bad_value(key, "STRING value does not hold a string");
      sink.put_string(*s);
      return;
    }
    case ValueType::ARRAY: {
      const auto* a = std::get_if<std::vector<Value>>(&v.v);
      if (!a) bad_value(key, "ARRAY value does not hold elements");
      sink.put<uint32_t>(static_cast<uint32_t>(v.array_type));
      sink.put<uint64_t>(a->size());
      for (size_t i = 0; i < a->size(); ++i) {
        if ((*a)[i].type != v.array_type)
          bad_value(key, "array element " + std::to_string(i) + " is " +
                             std::string(value_type_name((*a)[i].type)) + " in an array of " +
                             std::string(value_type_name(v.array_type)));
        put_value(sink, (*a)[i], key);
      }
      return;
    }
  }
  bad_value(key, "unknown value type " + std::to_string(static_cast<uint32_t>(v.type)));
}

void check_alignment(uint64_t a) {
  if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 30))
    throw GgufError("GgufWriter: alignment " + std::to_string(a) +
                    " is not a power of two up to 2^30");
}

}  // namespace

GgufWriter::GgufWriter(uint64_t alignment) : alignment_(alignment) {
  check_alignment(alignment);
  if (alignment != 32) set("general.alignment", Value::u32(static_cast<uint32_t>(alignment)));
}

void GgufWriter::set(std::string key, Value v) {
  v.key.clear();
  for (auto& [k, old] : metadata_) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(v));
}

void GgufWriter::add_tensor(std::string name, TensorType type, std::vector<uint64_t> dims,
                            std::vector<uint8_t> bytes) {
  const std::string field = "GgufWriter: tensor '" + name + "': ";
  for (const auto& t : tensors_)
    if (t.name == name) throw GgufError(field + "duplicate tensor name");
  if (!type_traits(type))
    throw GgufError(field + "unknown tensor type " + std::to_string(static_cast<uint32_t>(type)));
  if (dims.empty() || dims.size() > 4)
    throw GgufError(field + std::to_string(dims.size()) + " dimensions (must be 1..4)");
  for (uint64_t d : dims)
    if (d == 0) throw GgufError(field + "a dimension is 0");
  TensorInfo info;
  info.name = name;
  info.type = type;
  info.dims = dims;
  const uint64_t need = info.n_bytes();  // throws on block-size mismatch or overflow
  if (bytes.size() != need)
    throw GgufError(field + std::to_string(bytes.size()) + " bytes given, " +
                    std::string(type_name(type)) + " of these dimensions needs " +
                    std::to_string(need));
  tensors_.push_back({std::move(name), type, std::move(dims), std::move(bytes)});
}

void GgufWriter::add_tensor_f32(std::string name, std::vector<uint64_t> dims,
                                const std::vector<float>& data, TensorType store_as) {
  TensorInfo info;
  info.name = name;
  info.dims = dims;
  const uint64_t n = info.n_elements();
  if (data.size() != n)
    throw GgufError("GgufWriter: tensor '" + name + "': " + std::to_string(data.size()) +
                    " floats given, dimensions need " + std::to_string(n));
  if (!quant::can_quantize(store_as))
    throw GgufError("GgufWriter: tensor '" + name + "': cannot store floats as " +
                    std::string(type_name(store_as)));
  if (dims.empty() || dims[0] % type_traits(store_as)->block_size != 0)
    throw GgufError("GgufWriter: tensor '" + name + "': row length is not a multiple of " +
                    std::string(type_name(store_as)) + "'s block size " +
                    std::to_string(type_traits(store_as)->block_size));
  // Quantized row by row, as a model's rows are (blocks never straddle rows).
  const uint64_t row = dims[0];
  const uint64_t row_size = row_bytes(store_as, row);
  std::vector<uint8_t> bytes(row_size * (n / row));
  try {
    for (uint64_t r = 0; r < n / row; ++r)
      quant::quantize_row(store_as, data.data() + r * row, bytes.data() + r * row_size,
                          static_cast<int64_t>(row));
  } catch (const quant::QuantError& e) {
    throw GgufError("GgufWriter: tensor '" + name + "': " + e.what());
  }
  add_tensor(std::move(name), store_as, std::move(dims), std::move(bytes));
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  uint64_t alignment = 32;
  for (const auto& [k, v] : metadata_) {
    if (k != "general.alignment") continue;
    if (!v.is_integer()) bad_value(k, "alignment must be an integer");
    alignment = v.as_uint();
    check_alignment(alignment);
  }
  ByteSink sink;
  sink.out.reserve(1024);
  sink.put<uint32_t>(0x46554747u);  // "GGUF" read as a little-endian uint32
  sink.put<uint32_t>(3);
  sink.put<uint64_t>(tensors_.size());
  sink.put<uint64_t>(metadata_.size());
  for (const auto& [k, v] : metadata_) {
    sink.put_string(k);
    sink.put<uint32_t>(static_cast<uint32_t>(v.type));
    put_value(sink, v, k);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    sink.put_string(t.name);
    sink.put<uint32_t>(static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) sink.put<uint64_t>(d);
    sink.put<uint32_t>(static_cast<uint32_t>(t.type));
    sink.put<uint64_t>(offset);
    offset += (t.bytes.size() + alignment - 1) / alignment * alignment;
  }
  sink.pad_to(alignment);
  for (const auto& t : tensors_) {
    sink.out.insert(sink.out.end(), t.bytes.begin(), t.bytes.end());
    sink.pad_to(alignment);
  }
  return std::move(sink.out);
}

void GgufWriter::write(const std::string& path) const {
  const std::vector<uint8_t> bytes = to_bytes();
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw GgufError(path + ": cannot open for writing");
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  f.close();
  if (!f) throw GgufError(path + ": write failed");
}

}  // namespace tessera::gguf
