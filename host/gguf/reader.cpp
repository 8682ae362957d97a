// GGUF reader: maps the file, then checks every length, count, type, offset and size against the
// bytes actually present before using it, so a damaged file gives an error naming the field instead
// of a crash or an absurd allocation.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include "host/gguf/gguf.h"

namespace tessera::gguf {

// Owns either a read-only private mapping or a byte vector. Both keep their address when the owning
// GgufFile moves, so TensorInfo::data pointers stay valid.
struct GgufFile::Storage {
  void* map = nullptr;
  size_t map_size = 0;
  std::vector<uint8_t> bytes;
  ~Storage() {
    if (map) munmap(map, map_size);
  }
};

namespace {

constexpr uint32_t kMaxDims = 4;              // ggml's GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;             // nesting is legal but never deep in real files
constexpr uint64_t kMaxAlignment = 1u << 30;  // far above any real value; keeps offsets sane
constexpr uint64_t kMaxDim = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// Smallest number of bytes one value of type t occupies in the file; 0 for unknown types.
uint64_t min_value_bytes(uint32_t t) {
  switch (static_cast<ValueType>(t)) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL:
      return 1;
    case ValueType::UINT16:
    case ValueType::INT16:
      return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32:
      return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64:
      return 8;
    case ValueType::STRING:
      return 8;  // the length
    case ValueType::ARRAY:
      return 4 + 8;  // element type + count
  }
  return 0;
}

std::string hex(uint64_t x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(x));
  return buf;
}

class Parser {
 public:
  Parser(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), p_(data), size_(size) {}

  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;
  std::vector<std::pair<std::string, Value>> metadata;
  std::vector<TensorInfo> tensors;

  void run() {
    read_header();
    read_metadata();
    read_alignment();
    read_tensor_infos();
    place_tensors();
  }

 private:
  // Inside arrays the field names the element path ("... element 5 element 2"); the path is only
  // turned into text here, so reading a 150k-entry vocabulary builds no per-element strings.
  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    std::string where = field;
    for (uint64_t j : elem_path_) where += " element " + std::to_string(j);
    throw GgufError(path_ + ": " + where + ": " + problem);
  }

  uint64_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, const std::string& field, const char* what) const {
    if (n > remaining())
      fail(field, std::string("truncated: ") + what + " needs " + std::to_string(n) +
                      " bytes at offset " + std::to_string(pos_) + ", file has " +
                      std::to_string(remaining()) + " left");
  }

  template <typename T>
  T read(const std::string& field, const char* what) {
    need(sizeof(T), field, what);
    T x;
    std::memcpy(&x, p_ + pos_, sizeof(T));  // GGUF is little-endian, as is every host we build for
    pos_ += sizeof(T);
    return x;
  }

  std::string read_string(const std::string& field, const char* what) {
    const uint64_t len = read<uint64_t>(field, what);
    if (len > remaining())
      fail(field, std::string(what) + " length " + std::to_string(len) + " exceeds the " +
                      std::to_string(remaining()) + " bytes left in the file");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }

  void read_header() {
    if (size_ < 4)
      fail("header", "file is " + std::to_string(size_) + " bytes, too short for a GGUF header");
    if (std::memcmp(p_, "GGUF", 4) != 0) {
      uint32_t m;
      std::memcpy(&m, p_, 4);
      fail("magic", "bad magic " + hex(m) + " (expected \"GGUF\"); not a GGUF file");
    }
    pos_ = 4;
    version = read<uint32_t>("version", "version");
    if (version == 1) fail("version", "GGUF version 1 is not supported (only 2 and 3)");
    if (version == 0x02000000u || version == 0x03000000u)
      fail("version", "big-endian GGUF files are not supported");
    if (version != 2 && version != 3)
      fail("version", "unsupported GGUF version " + std::to_string(version) + " (only 2 and 3)");
    n_tensors_ = read<uint64_t>("tensor count", "tensor count");
    n_kv_ = read<uint64_t>("metadata count", "metadata count");
    // Every key/value takes at least 13 bytes and every tensor info at least 32, so counts that
    // could not fit in the rest of the file are rejected before anything is reserved.
    if (n_kv_ > remaining() / 13)
      fail("metadata count", "count " + std::to_string(n_kv_) + " cannot fit in the " +
                                 std::to_string(remaining()) + " bytes left in the file");
    if (n_tensors_ > remaining() / 32)
      fail("tensor count", "count " + std::to_string(n_tensors_) + " cannot fit in the " +
                               std::to_string(remaining()) + " bytes left in the file");
  }

  void read_metadata() {
    metadata.reserve(n_kv_);
    std::set<std::string, std::less<>> seen;
    for (uint64_t i = 0; i < n_kv_; ++i) {
      const std::string index_field = "metadata key #" + std::to_string(i);
      std::string key = read_string(index_field, "key");
      const std::string field = index_field + " '" + key + "'";
      if (!seen.insert(key).second) fail(field, "duplicate key");
      const uint32_t type = read<uint32_t>(field, "value type");
      Value v = read_value(type, 0, field);
      name_values(v, key);
      metadata.emplace_back(std::move(key), std::move(v));
    }
  }

  // Gives a value and, recursively, its array elements the key they are read under
  // ("tokenizer.ggml.tokens[3]"), so a type error on any of them names the field.
  static void name_values(Value& v, const std::string& key) {
    v.key = key;
    if (auto* elems = std::get_if<std::vector<Value>>(&v.v))
      for (size_t i = 0; i < elems->size(); ++i)
        name_values((*elems)[i], key + "[" + std::to_string(i) + "]");
  }

  Value read_value(uint32_t type, int depth, const std::string& field) {
    Value v;
    if (min_value_bytes(type) == 0) fail(field, "unknown value type " + std::to_string(type));
    v.type = static_cast<ValueType>(type);
    switch (v.type) {
      case ValueType::UINT8:
        v.v = uint64_t{read<uint8_t>(field, "UINT8 value")};
        break;
      case ValueType::INT8:
        v.v = int64_t{read<int8_t>(field, "INT8 value")};
        break;
      case ValueType::UINT16:
        v.v = uint64_t{read<uint16_t>(field, "UINT16 value")};
        break;
      case ValueType::INT16:
        v.v = int64_t{read<int16_t>(field, "INT16 value")};
        break;
      case ValueType::UINT32:
        v.v = uint64_t{read<uint32_t>(field, "UINT32 value")};
        break;
      case ValueType::INT32:
        v.v = int64_t{read<int32_t>(field, "INT32 value")};
        break;
      case ValueType::UINT64:
        v.v = read<uint64_t>(field, "UINT64 value");
        break;
      case ValueType::INT64:
        v.v = read<int64_t>(field, "INT64 value");
        break;
      case ValueType::FLOAT32:
        v.v = double{read<float>(field, "FLOAT32 value")};
        break;
      case ValueType::FLOAT64:
        v.v = read<double>(field, "FLOAT64 value");
        break;
      case ValueType::BOOL: {
        const uint8_t b = read<uint8_t>(field, "BOOL value");
        if (b > 1) fail(field, "BOOL byte " + std::to_string(b) + " is neither 0 nor 1");
        v.v = b == 1;
        break;
      }
      case ValueType::STRING:
        v.v = read_string(field, "string");
        break;
      case ValueType::ARRAY: {
        if (depth >= kMaxArrayDepth)
          fail(field, "arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels");
        const uint32_t elem = read<uint32_t>(field, "array element type");
        const uint64_t min_bytes = min_value_bytes(elem);
        if (min_bytes == 0) fail(field, "unknown array element type " + std::to_string(elem));
        const uint64_t count = read<uint64_t>(field, "array length");
        if (count > remaining() / min_bytes)
          fail(field, "array length " + std::to_string(count) + " of " +
                          std::string(value_type_name(static_cast<ValueType>(elem))) +
                          " cannot fit in the " + std::to_string(remaining()) +
                          " bytes left in the file");
        v.array_type = static_cast<ValueType>(elem);
        std::vector<Value> elems;
        elems.reserve(count);
        elem_path_.push_back(0);
        for (uint64_t j = 0; j < count; ++j) {
          elem_path_.back() = j;
          elems.push_back(read_value(elem, depth + 1, field));
        }
        elem_path_.pop_back();
        v.v = std::move(elems);
        break;
      }
    }
    return v;
  }

  void read_alignment() {
    for (const auto& [key, v] : metadata) {
      if (key != "general.alignment") continue;
      const std::string field = "metadata key 'general.alignment'";
      if (!v.is_integer())
        fail(field, "type " + std::string(value_type_name(v.type)) + " is not an integer");
      const auto* u = std::get_if<uint64_t>(&v.v);
      const auto* i = std::get_if<int64_t>(&v.v);
      const uint64_t a = u ? *u : (*i < 0 ? 0 : static_cast<uint64_t>(*i));
      if (a == 0 || (a & (a - 1)) != 0 || a > kMaxAlignment)
        fail(field, "alignment " + (u ? std::to_string(*u) : std::to_string(*i)) +
                        " is not a power of two between 1 and " + std::to_string(kMaxAlignment));
      alignment = a;
    }
  }

  void read_tensor_infos() {
    tensors.reserve(n_tensors_);
    std::set<std::string, std::less<>> seen;
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      TensorInfo t;
      const std::string index_field = "tensor #" + std::to_string(i);
      t.name = read_string(index_field, "name");
      const std::string field = index_field + " '" + t.name + "'";
      if (!seen.insert(t.name).second) fail(field, "duplicate tensor name");
      const uint32_t n_dims = read<uint32_t>(field, "n_dims");
      if (n_dims == 0 || n_dims > kMaxDims)
        fail(field,
             "n_dims " + std::to_string(n_dims) + " is outside 1.." + std::to_string(kMaxDims));
      t.dims.resize(n_dims);
      uint64_t n_elements = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        t.dims[d] = read<uint64_t>(field, "dimension");
        if (t.dims[d] == 0) fail(field, "dimension " + std::to_string(d) + " is 0");
        if (t.dims[d] > kMaxDim)
          fail(field, "dimension " + std::to_string(d) + " = " + std::to_string(t.dims[d]) +
                          " exceeds INT64_MAX");
        if (__builtin_mul_overflow(n_elements, t.dims[d], &n_elements) || n_elements > kMaxDim)
          fail(field, "element count overflows 63 bits at dimension " + std::to_string(d));
      }
      const uint32_t type = read<uint32_t>(field, "type");
      t.type = static_cast<TensorType>(type);
      const TypeTraits* tr = type_traits(t.type);
      if (!tr) fail(field, "unknown tensor type " + std::to_string(type));
      if (t.dims[0] % tr->block_size != 0)
        fail(field, "row length " + std::to_string(t.dims[0]) + " is not a multiple of " +
                        std::string(tr->name) + "'s block size " + std::to_string(tr->block_size));
      uint64_t bytes = (t.dims[0] / tr->block_size);
      bool overflow = __builtin_mul_overflow(bytes, uint64_t{tr->block_bytes}, &bytes);
      for (uint32_t d = 1; d < n_dims && !overflow; ++d)
        overflow = __builtin_mul_overflow(bytes, t.dims[d], &bytes);
      if (overflow) fail(field, "byte size overflows 64 bits");
      t.offset = read<uint64_t>(field, "offset");
      tensors.push_back(std::move(t));
      sizes_.push_back(bytes);
    }
  }

  void place_tensors() {
    const uint64_t infos_end = pos_;
    const uint64_t padded =
        (infos_end + alignment - 1) / alignment * alignment;  // no overflow: pos <= size
    data_offset = padded;
    if (tensors.empty()) return;  // a file without tensors may end right after its metadata
    if (data_offset > size_)
      fail("data section", "starts at offset " + std::to_string(data_offset) +
                               ", past the end of the file (" + std::to_string(size_) + " bytes)");
    const uint64_t data_size = size_ - data_offset;
    for (size_t i = 0; i < tensors.size(); ++i) {
      TensorInfo& t = tensors[i];
      const std::string field = "tensor '" + t.name + "'";
      if (t.offset % alignment != 0)
        fail(field, "offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                        std::to_string(alignment));
      if (t.offset > data_size || sizes_[i] > data_size - t.offset)
        fail(field, "offset " + std::to_string(t.offset) + " + size " + std::to_string(sizes_[i]) +
                        " runs past the end of the data section (" + std::to_string(data_size) +
                        " bytes)");
      t.data = p_ + data_offset + t.offset;
    }
    // Overlapping tensors would alias each other's data: reject them.
    std::vector<size_t> order(tensors.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return tensors[a].offset < tensors[b].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const size_t a = order[k - 1], b = order[k];
      if (tensors[a].offset + sizes_[a] > tensors[b].offset)
        fail("tensor '" + tensors[b].name + "'",
             "data at offset " + std::to_string(tensors[b].offset) + " overlaps tensor '" +
                 tensors[a].name + "' (offset " + std::to_string(tensors[a].offset) + ", " +
                 std::to_string(sizes_[a]) + " bytes)");
    }
  }

  const std::string& path_;
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
  std::vector<uint64_t> sizes_;
  std::vector<uint64_t> elem_path_;
};

// Closes a file descriptor on every path out of open().
struct FdGuard {
  int fd;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::string& path) {
  GgufFile f;
  f.path_ = path;
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever; the
  // regular-file check below then refuses it. Reads go through mmap, which the flag does not
  // affect.
  FdGuard fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  if (fd.fd < 0) throw GgufError(path + ": open: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd.fd, &st) != 0) throw GgufError(path + ": stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    throw GgufError(path + ": open: not a regular file (a directory, FIFO or device)");
  if (st.st_size == 0) throw GgufError(path + ": header: file is empty");
  f.storage_ = std::make_unique<Storage>();
  const size_t n = static_cast<size_t>(st.st_size);
  void* m = mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (m == MAP_FAILED) throw GgufError(path + ": mmap: " + std::strerror(errno));
  f.storage_->map = m;
  f.storage_->map_size = n;
  f.base_ = static_cast<const uint8_t*>(m);
  f.size_ = n;
  f.parse();
  return f;
}

GgufFile GgufFile::from_memory(std::vector<uint8_t> bytes, std::string name) {
  GgufFile f;
  f.path_ = std::move(name);
  f.storage_ = std::make_unique<Storage>();
  f.storage_->bytes = std::move(bytes);
  f.base_ = f.storage_->bytes.data();
  f.size_ = f.storage_->bytes.size();
  f.parse();
  return f;
}

void GgufFile::parse() {
  Parser p(path_, base_, size_);
  p.run();
  version_ = p.version;
  alignment_ = p.alignment;
  data_offset_ = p.data_offset;
  metadata_ = std::move(p.metadata);
  tensors_ = std::move(p.tensors);
  for (size_t i = 0; i < metadata_.size(); ++i) metadata_index_.emplace(metadata_[i].first, i);
  for (size_t i = 0; i < tensors_.size(); ++i) tensor_index_.emplace(tensors_[i].name, i);
}

void GgufFile::fail(const std::string& field, const std::string& problem) const {
  throw GgufError(path_ + ": " + field + ": " + problem);
}

const Value* GgufFile::find(std::string_view key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

const Value& GgufFile::get(std::string_view key) const {
  if (const Value* v = find(key)) return *v;
  fail("metadata key '" + std::string(key) + "'", "missing key");
}

namespace {
// Re-throws a Value accessor's error with the file name in front.
template <typename F>
auto with_file(const std::string& path, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const GgufError& e) {
    throw GgufError(path + ": " + e.what());
  }
}
}  // namespace

uint32_t GgufFile::get_u32(std::string_view key) const {
  const Value& v = get(key);
  const uint64_t x = with_file(path_, [&] { return v.as_uint(); });
  if (x > std::numeric_limits<uint32_t>::max())
    fail("metadata key '" + std::string(key) + "'",
         "value " + std::to_string(x) + " does not fit 32 bits");
  return static_cast<uint32_t>(x);
}
uint64_t GgufFile::get_u64(std::string_view key) const {
  return (with_file(path_, [&v = get(key)] { return v.as_uint(); }));
}
int64_t GgufFile::get_i64(std::string_view key) const {
  return (with_file(path_, [&v = get(key)] { return v.as_int(); }));
}
float GgufFile::get_f32(std::string_view key) const {
  return static_cast<float>((with_file(path_, [&v = get(key)] { return v.as_float(); })));
}
bool GgufFile::get_bool(std::string_view key) const {
  return (with_file(path_, [&v = get(key)] { return v.as_bool(); }));
}
const std::string& GgufFile::get_string(std::string_view key) const {
  const Value& v = get(key);
  return with_file(path_, [&]() -> const std::string& { return v.as_string(); });
}
const std::vector<Value>& GgufFile::get_array(std::string_view key) const {
  const Value& v = get(key);
  return with_file(path_, [&]() -> const std::vector<Value>& { return v.as_array(); });
}
uint32_t GgufFile::get_u32_or(std::string_view key, uint32_t fallback) const {
  return find(key) ? get_u32(key) : fallback;
}
uint64_t GgufFile::get_u64_or(std::string_view key, uint64_t fallback) const {
  return find(key) ? get_u64(key) : fallback;
}
float GgufFile::get_f32_or(std::string_view key, float fallback) const {
  return find(key) ? get_f32(key) : fallback;
}
bool GgufFile::get_bool_or(std::string_view key, bool fallback) const {
  return find(key) ? get_bool(key) : fallback;
}
std::string GgufFile::get_string_or(std::string_view key, std::string fallback) const {
  return find(key) ? get_string(key) : fallback;
}

const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& GgufFile::tensor(std::string_view name) const {
  if (const TensorInfo* t = find_tensor(name)) return *t;
  fail("tensor '" + std::string(name) + "'", "no such tensor");
}

}  // namespace tessera::gguf
