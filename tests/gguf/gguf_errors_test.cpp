// Every kind of damage the reader must reject, each checked for an error that names the file, the
// field and the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "host/gguf/gguf.h"
#include "tests/gguf/gguf_fixture.h"

namespace tessera::gguf {
namespace {

using testing::find_bytes;
using testing::make_fixture_writer;
using testing::poke;

// Loads bytes and returns the error message, or "" if they loaded.
std::string load_error(std::vector<uint8_t> bytes) {
  try {
    GgufFile::from_memory(std::move(bytes), "bad.gguf");
  } catch (const GgufError& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_LOAD_ERROR(bytes, ...)                                                           \
  do {                                                                                          \
    const std::string msg = load_error(bytes);                                                  \
    ASSERT_FALSE(msg.empty()) << "expected an error";                                           \
    EXPECT_EQ(msg.rfind("bad.gguf: ", 0), 0u) << msg;                                           \
    for (const char* part : {__VA_ARGS__}) EXPECT_NE(msg.find(part), std::string::npos) << msg; \
  } while (0)

std::vector<uint8_t> fixture() {
  return make_fixture_writer().to_bytes();
}

// Offset of a key's or tensor name's string length field (8 bytes before the text).
size_t name_at(const std::vector<uint8_t>& b, const std::string& name) {
  const size_t at = find_bytes(b, name);
  EXPECT_NE(at, static_cast<size_t>(-1)) << name;
  return at;
}

TEST(GgufErrors, FixtureLoads) {
  EXPECT_EQ(load_error(fixture()), "");
}

TEST(GgufErrors, Header) {
  const std::vector<uint8_t> two_bytes{'G', 'G'};
  EXPECT_LOAD_ERROR(two_bytes, "header", "too short");
  auto b = fixture();
  b[0] = 'X';
  EXPECT_LOAD_ERROR(b, "magic", "bad magic");
  b = fixture();
  poke<uint32_t>(b, 4, 1);
  EXPECT_LOAD_ERROR(b, "version", "version 1 is not supported");
  poke<uint32_t>(b, 4, 4);
  EXPECT_LOAD_ERROR(b, "version", "unsupported GGUF version 4");
  poke<uint32_t>(b, 4, 0x03000000u);
  EXPECT_LOAD_ERROR(b, "version", "big-endian");
  b = fixture();
  poke<uint32_t>(b, 4, 2);  // v2 has the same layout as v3
  EXPECT_EQ(load_error(b), "");
  b.resize(10);
  EXPECT_LOAD_ERROR(b, "tensor count", "truncated");
  b = fixture();
  poke<uint64_t>(b, 16, 1ull << 40);
  EXPECT_LOAD_ERROR(b, "metadata count", "cannot fit");
  b = fixture();
  poke<uint64_t>(b, 8, ~0ull);
  EXPECT_LOAD_ERROR(b, "tensor count", "cannot fit");
}

TEST(GgufErrors, MetadataLengths) {
  auto b = fixture();
  size_t key = name_at(b, "test.u16");
  poke<uint64_t>(b, key - 8, ~0ull);
  EXPECT_LOAD_ERROR(b, "metadata key #3", "key length 18446744073709551615 exceeds");
  b = fixture();
  key = name_at(b, "test.string");
  poke<uint64_t>(b, key + 11 + 4, 1ull << 50);
  EXPECT_LOAD_ERROR(b, "metadata key #13 'test.string'", "string length 1125899906842624 exceeds");
  b = fixture();
  key = name_at(b, "test.strings");
  poke<uint64_t>(b, key + 12 + 4 + 4, 1ull << 61);  // array count after type tag and element type
  EXPECT_LOAD_ERROR(b, "metadata key #15 'test.strings'",
                    "array length 2305843009213693952 of STRING cannot fit");
  b = fixture();
  const size_t elem2 = name_at(b, "a b");  // third element of test.strings
  poke<uint64_t>(b, elem2 - 8, 1ull << 40);
  EXPECT_LOAD_ERROR(b, "'test.strings' element 2", "string length");
  b = fixture();
  const size_t nested = name_at(b, "yz");
  poke<uint64_t>(b, nested - 8, 999999);
  EXPECT_LOAD_ERROR(b, "'test.nested' element 0 element 1", "string length 999999");
}

TEST(GgufErrors, MetadataTypes) {
  auto b = fixture();
  size_t key = name_at(b, "test.u32");
  poke<uint32_t>(b, key + 8, 13);
  EXPECT_LOAD_ERROR(b, "metadata key #5 'test.u32'", "unknown value type 13");
  b = fixture();
  key = name_at(b, "test.i32s");
  poke<uint32_t>(b, key + 9 + 4, 77);
  EXPECT_LOAD_ERROR(b, "'test.i32s'", "unknown array element type 77");
  b = fixture();
  key = name_at(b, "test.bool_true");
  b[key + 14 + 4] = 2;
  EXPECT_LOAD_ERROR(b, "'test.bool_true'", "BOOL byte 2");
  b = fixture();
  key = name_at(b, "test.i8");  // rename test.i8 to test.u8: duplicate
  b[key + 5] = 'u';
  EXPECT_LOAD_ERROR(b, "metadata key #2 'test.u8'", "duplicate key");
}

TEST(GgufErrors, DeepNesting) {
  GgufWriter w;
  Value v = Value::i32s({1});
  for (int i = 0; i < 12; ++i) v = Value::array(ValueType::ARRAY, {v});
  w.set("deep", v);
  EXPECT_LOAD_ERROR(w.to_bytes(), "'deep'", "nested deeper");
}

TEST(GgufErrors, Alignment) {
  for (uint32_t bad : {0u, 3u, 48u, 1u << 31}) {
    GgufWriter w;
    w.set("general.alignmenX",
          Value::u32(bad));  // the writer refuses bad alignments; patch the name
    auto b = w.to_bytes();
    b[name_at(b, "general.alignmenX") + 16] = 't';
    EXPECT_LOAD_ERROR(b, "general.alignment", "not a power of two");
  }
  GgufWriter w;
  w.set("general.alignment", Value::string("32"));
  EXPECT_THROW(w.to_bytes(), GgufError);
}

TEST(GgufErrors, TensorInfos) {
  auto b = fixture();
  const size_t q = name_at(b, "blk.0.attn_q.weight");
  const size_t after = q + 19;  // n_dims, dims[2], type, offset follow the name
  poke<uint32_t>(b, after, 5);
  EXPECT_LOAD_ERROR(b, "tensor #1 'blk.0.attn_q.weight'", "n_dims 5 is outside 1..4");
  b = fixture();
  poke<uint32_t>(b, after, 0);
  EXPECT_LOAD_ERROR(b, "tensor #1", "n_dims 0");
  b = fixture();
  poke<uint64_t>(b, after + 4 + 8, 0);
  EXPECT_LOAD_ERROR(b, "tensor #1", "dimension 1 is 0");
  b = fixture();
  poke<uint64_t>(b, after + 4, 1ull << 40);
  poke<uint64_t>(b, after + 4 + 8, 1ull << 40);
  EXPECT_LOAD_ERROR(b, "tensor #1 'blk.0.attn_q.weight'", "element count overflows");
  b = fixture();
  poke<uint64_t>(b, after + 4, ~0ull);
  EXPECT_LOAD_ERROR(b, "tensor #1", "exceeds INT64_MAX");
  b = fixture();
  poke<uint32_t>(b, after + 20, 99);
  EXPECT_LOAD_ERROR(b, "tensor #1 'blk.0.attn_q.weight'", "unknown tensor type 99");
  b = fixture();
  poke<uint32_t>(b, after + 20,
                 static_cast<uint32_t>(TensorType::Q4_0));  // 32 columns ok, but size changes
  EXPECT_EQ(load_error(b), "");
  poke<uint64_t>(b, after + 4, 16);  // 16 is not a multiple of Q4_0's 32
  EXPECT_LOAD_ERROR(b, "row length 16 is not a multiple of Q4_0's block size 32");
  b = fixture();
  const size_t ids = name_at(b, "ids");  // last tensor: n_dims(4) dims(8) type(4) offset(8)
  poke<uint64_t>(b, ids + 3 + 4 + 8 + 4, 1u << 20);
  EXPECT_LOAD_ERROR(b, "tensor 'ids'", "runs past the end of the data section");
  b = fixture();
  poke<uint64_t>(b, ids + 3 + 4 + 8 + 4, 4);
  EXPECT_LOAD_ERROR(b, "tensor 'ids'", "offset 4 is not a multiple of the alignment 32");
  b = fixture();
  poke<uint64_t>(b, ids + 3 + 4 + 8 + 4, 0);
  EXPECT_LOAD_ERROR(b, "overlaps tensor");
  b = fixture();
  poke<uint64_t>(b, ids + 3 + 4 + 8 + 4, ~0ull - 31);
  EXPECT_LOAD_ERROR(b, "tensor 'ids'", "runs past the end");
  b = fixture();
  const size_t k = name_at(b, "blk.0.attn_k.weight");
  b[k + 11] = 'q';  // attn_k -> attn_q: duplicate of tensor #1
  EXPECT_LOAD_ERROR(b, "tensor #3 'blk.0.attn_q.weight'", "duplicate tensor name");
}

TEST(GgufErrors, Truncation) {
  const auto full = fixture();
  const GgufFile ok = GgufFile::from_memory(full, "ok");
  // Cutting anywhere before the last tensor's end must fail; the error names what was cut.
  const uint64_t end_of_data =
      ok.data_offset() + ok.tensor("ids").offset + ok.tensor("ids").n_bytes();
  for (size_t n = 0; n < end_of_data; ++n) {
    std::vector<uint8_t> b(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_NE(load_error(b), "") << "cut at " << n;
  }
  std::vector<uint8_t> b(full.begin(), full.begin() + 100);
  EXPECT_LOAD_ERROR(b, "metadata count", "count 21 cannot fit in the 76 bytes left");
  const size_t ids = name_at(full, "ids");
  b.assign(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(ids + 3 + 4 + 3));
  EXPECT_LOAD_ERROR(b, "tensor #4 'ids'", "truncated: dimension needs 8 bytes");
  b.assign(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(ok.data_offset() + 10));
  EXPECT_LOAD_ERROR(b, "tensor 'token_embd.weight'",
                    "runs past the end of the data section (10 bytes)");
}

TEST(GgufErrors, OpenFailures) {
  EXPECT_THROW(GgufFile::open("/nonexistent/x.gguf"), GgufError);
  try {
    GgufFile::open("/nonexistent/x.gguf");
  } catch (const GgufError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.gguf: open: "), std::string::npos)
        << e.what();
  }
  const auto empty = std::filesystem::path(::testing::TempDir()) / "tessera_empty.gguf";
  { std::ofstream(empty.string()); }
  EXPECT_THROW(GgufFile::open(empty.string()), GgufError);
  std::filesystem::remove(empty);
  EXPECT_THROW(GgufFile::open(::testing::TempDir()), GgufError);  // a directory
}

TEST(GgufErrors, AccessorsNameKeyAndFile) {
  const GgufFile f = GgufFile::from_memory(fixture(), "f.gguf");
  auto message = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const GgufError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(message([&] { f.get("nope"); }), "f.gguf: metadata key 'nope': missing key");
  EXPECT_EQ(message([&] { f.get_u32("test.string"); }),
            "f.gguf: metadata key 'test.string': expected an unsigned integer, found STRING");
  EXPECT_NE(message([&] { f.get_u32("test.i8"); }).find("negative -100"), std::string::npos);
  EXPECT_NE(message([&] { f.get_u32("test.u64"); }).find("does not fit 32 bits"),
            std::string::npos);
  EXPECT_NE(message([&] { f.get_string("test.u8"); }).find("expected STRING, found UINT8"),
            std::string::npos);
  EXPECT_NE(message([&] { f.get_bool("test.f32"); }).find("expected BOOL"), std::string::npos);
  EXPECT_NE(message([&] {
              f.tensor("missing.weight");
            }).find("f.gguf: tensor 'missing.weight': no such tensor"),
            std::string::npos);
  EXPECT_NE(message([&] {
              f.get_array("test.f32s")[0].as_string();
            }).find("expected STRING, found FLOAT32"),
            std::string::npos);
}

TEST(GgufErrors, WriterRejectsBadInput) {
  GgufWriter w;
  EXPECT_THROW(w.add_tensor("t", TensorType::Q4_0, {16}, std::vector<uint8_t>(9)), GgufError);
  EXPECT_THROW(w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(15)), GgufError);
  EXPECT_THROW(w.add_tensor("t", TensorType::F32, {1, 1, 1, 1, 1}, std::vector<uint8_t>(4)),
               GgufError);
  EXPECT_THROW(w.add_tensor("t", static_cast<TensorType>(5), {4}, std::vector<uint8_t>(16)),
               GgufError);
  w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(16));
  EXPECT_THROW(w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(16)), GgufError);
  EXPECT_THROW(w.add_tensor_f32("u", {4}, std::vector<float>(3)), GgufError);
  EXPECT_THROW(GgufWriter(3), GgufError);
  w.set("mixed", Value::array(ValueType::INT32, {Value::i32(1), Value::string("x")}));
  EXPECT_THROW(w.to_bytes(), GgufError);
}

}  // namespace
}  // namespace tessera::gguf
