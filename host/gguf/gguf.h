// GGUF v2/v3 files: a validating read-only view over a memory map (GgufFile) and a v3 writer
// (GgufWriter) that tests and tools use to build fixture models.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "host/gguf/gguf_error.h"
#include "host/gguf/tensor_type.h"

namespace tessera::gguf {

// Metadata value types, numbered as in the file format.
enum class ValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};
std::string_view value_type_name(ValueType t);  // "UINT32", "unknown(42)" -> "unknown"

// One metadata value. Integers are widened (unsigned -> uint64_t, signed -> int64_t, floats ->
// double) but `type` keeps the type stored in the file, so a read-then-write round trip is exact.
// Arrays nest: an ARRAY of ARRAYs holds Values of type ARRAY.
struct Value {
  ValueType type = ValueType::UINT8;
  std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<Value>> v;
  ValueType array_type = ValueType::UINT8;  // element type when type == ARRAY
  std::string key;  // the metadata key a value read from a file has, "key[i]" for array elements

  // Typed accessors; each throws GgufError naming the key and both types on a mismatch.
  uint64_t as_uint() const;  // any integer type holding a value >= 0
  int64_t as_int() const;    // any integer type holding a value <= INT64_MAX
  double as_float() const;   // FLOAT32/FLOAT64, or any integer type
  bool as_bool() const;
  const std::string& as_string() const;
  const std::vector<Value>& as_array() const;
  bool is_integer() const;

  // Factories (used by the writer and tests).
  static Value u8(uint8_t x);
  static Value i8(int8_t x);
  static Value u16(uint16_t x);
  static Value i16(int16_t x);
  static Value u32(uint32_t x);
  static Value i32(int32_t x);
  static Value u64(uint64_t x);
  static Value i64(int64_t x);
  static Value f32(float x);
  static Value f64(double x);
  static Value boolean(bool x);
  static Value string(std::string s);
  // Every element must have type `elem` (checked by the writer).
  static Value array(ValueType elem, std::vector<Value> elems);
  static Value strings(const std::vector<std::string>& xs);
  static Value f32s(const std::vector<float>& xs);
  static Value i32s(const std::vector<int32_t>& xs);
  static Value u32s(const std::vector<uint32_t>& xs);

  bool operator==(const Value& o) const;  // type, array_type and contents; ignores `key`
};

struct TensorInfo {
  std::string name;
  TensorType type = TensorType::F32;
  std::vector<uint64_t> dims;     // ggml order: dims[0] is the row length (contiguous)
  uint64_t offset = 0;            // relative to the start of the data section
  const uint8_t* data = nullptr;  // into the file's bytes; valid while its GgufFile lives

  uint64_t n_elements() const;
  uint64_t n_bytes() const;
  uint64_t n_rows() const;  // n_elements / dims[0]
};

// Read-only view of a GGUF file. Everything is validated when opened, so later accessors never read
// out of range. Move-only; all const methods are safe to call from several threads at once.
class GgufFile {
 public:
  // Memory-maps `path` (the mapping lives as long as the object). Throws GgufError.
  static GgufFile open(const std::string& path);
  // Parses bytes held in memory; `name` stands for the file name in error messages.
  static GgufFile from_memory(std::vector<uint8_t> bytes, std::string name);

  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
  const uint8_t* bytes() const { return base_; }         // the whole file

  const std::vector<std::pair<std::string, Value>>& metadata() const {
    return metadata_;
  }                                               // file order
  const Value* find(std::string_view key) const;  // nullptr when absent
  const Value& get(std::string_view key) const;   // throws GgufError "missing key"
  // Presence- and type-checked getters; errors name the file and key.
  uint32_t get_u32(std::string_view key) const;
  uint64_t get_u64(std::string_view key) const;
  int64_t get_i64(std::string_view key) const;
  float get_f32(std::string_view key) const;
  bool get_bool(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  const std::vector<Value>& get_array(std::string_view key) const;
  uint32_t get_u32_or(std::string_view key, uint32_t fallback) const;
  uint64_t get_u64_or(std::string_view key, uint64_t fallback) const;
  float get_f32_or(std::string_view key, float fallback) const;
  bool get_bool_or(std::string_view key, bool fallback) const;
  std::string get_string_or(std::string_view key, std::string fallback) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // file order
  const TensorInfo* find_tensor(std::string_view name) const;          // nullptr when absent
  const TensorInfo& tensor(std::string_view name) const;  // throws GgufError naming the tensor

 private:
  struct Storage;  // the mapping or the in-memory bytes
  GgufFile() = default;
  void parse();
  [[noreturn]] void fail(const std::string& field, const std::string& problem) const;

  std::unique_ptr<Storage> storage_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> metadata_index_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

// Builds a GGUF v3 file in memory. Not thread-safe.
class GgufWriter {
 public:
  // alignment must be a power of two; a value other than 32 (GGUF's default) is written as
  // general.alignment.
  explicit GgufWriter(uint64_t alignment = 32);

  void set(std::string key, Value v);  // replaces an existing key in place, else appends
  // bytes must hold exactly the tensor's size in `type`; dims in ggml order (dims[0] = row length).
  void add_tensor(std::string name, TensorType type, std::vector<uint64_t> dims,
                  std::vector<uint8_t> bytes);
  // Stores float data as `store_as`, quantized row by row through tessera_quant (any type
  // quant::can_quantize accepts); throws GgufError for other types or a bad row length.
  void add_tensor_f32(std::string name, std::vector<uint64_t> dims, const std::vector<float>& data,
                      TensorType store_as = TensorType::F32);

  std::vector<uint8_t> to_bytes() const;
  void write(const std::string& path) const;  // throws GgufError on I/O failure

 private:
  struct PendingTensor {
    std::string name;
    TensorType type;
    std::vector<uint64_t> dims;
    std::vector<uint8_t> bytes;
  };
  uint64_t alignment_;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace tessera::gguf
