// GGUF writer -> reader round trip (every value type, nested arrays, tensors of several types and
// alignments), accessors, and facts of the real stories260K model when it is present.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "host/common/half.h"
#include "host/gguf/gguf.h"
#include "tests/gguf/gguf_fixture.h"

namespace tessera::gguf {
namespace {

using testing::make_fixture_writer;

void expect_same_metadata(const GgufWriter& w, const GgufFile& f) {
  // Reading the writer's own bytes back must reproduce them exactly.
  const GgufFile again = GgufFile::from_memory(w.to_bytes(), "again");
  ASSERT_EQ(f.metadata().size(), again.metadata().size());
  for (size_t i = 0; i < f.metadata().size(); ++i) {
    EXPECT_EQ(f.metadata()[i].first, again.metadata()[i].first);
    EXPECT_TRUE(f.metadata()[i].second == again.metadata()[i].second) << f.metadata()[i].first;
  }
}

TEST(GgufRoundTrip, EveryValueType) {
  const GgufWriter w = make_fixture_writer();
  const GgufFile f = GgufFile::from_memory(w.to_bytes(), "fixture.gguf");
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.path(), "fixture.gguf");
  ASSERT_EQ(f.metadata().size(), 21u);
  EXPECT_EQ(f.metadata()[0].first, "general.architecture");  // file order is kept
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get("test.u8").type, ValueType::UINT8);
  EXPECT_EQ(f.get("test.u8").as_uint(), 200u);
  EXPECT_EQ(f.get("test.i8").as_int(), -100);
  EXPECT_EQ(f.get("test.u16").as_uint(), 60000u);
  EXPECT_EQ(f.get("test.i16").as_int(), -30000);
  EXPECT_EQ(f.get_u32("test.u32"), 4000000000u);
  EXPECT_EQ(f.get("test.i32").as_int(), -2000000000);
  EXPECT_EQ(f.get_u64("test.u64"), 0xfedcba9876543210ull);
  EXPECT_EQ(f.get_i64("test.i64"), -0x123456789abcdefll);
  EXPECT_EQ(f.get_f32("test.f32"), 0.1f);
  EXPECT_EQ(f.get("test.f32").type, ValueType::FLOAT32);
  EXPECT_EQ(f.get("test.f64").as_float(), -1e300);
  EXPECT_TRUE(f.get_bool("test.bool_true"));
  EXPECT_FALSE(f.get_bool("test.bool_false"));
  EXPECT_EQ(f.get_string("test.string"), std::string("h\xc3\xa9llo\n\0x"));
  EXPECT_EQ(f.get_string("test.empty_string"), "");
  const auto& strs = f.get_array("test.strings");
  ASSERT_EQ(strs.size(), 4u);
  EXPECT_EQ(f.get("test.strings").array_type, ValueType::STRING);
  EXPECT_EQ(strs[0].as_string(), "<unk>");
  EXPECT_EQ(strs[1].as_string(), "");
  EXPECT_EQ(strs[3].as_string(), std::string("\0z", 2));
  const auto& fl = f.get_array("test.f32s");
  ASSERT_EQ(fl.size(), 3u);
  EXPECT_EQ(fl[0].as_float(), 1.5);
  EXPECT_TRUE(std::signbit(fl[1].as_float()));
  EXPECT_TRUE(std::isinf(fl[2].as_float()));
  EXPECT_EQ(f.get_array("test.i32s")[0].as_int(), -1);
  EXPECT_TRUE(f.get_array("test.empty_array").empty());
  EXPECT_EQ(f.get("test.empty_array").array_type, ValueType::UINT64);
  EXPECT_TRUE(f.get_array("test.bools")[0].as_bool());
  const auto& nested = f.get_array("test.nested");
  ASSERT_EQ(nested.size(), 3u);
  EXPECT_EQ(f.get("test.nested").array_type, ValueType::ARRAY);
  EXPECT_EQ(nested[0].array_type, ValueType::STRING);
  EXPECT_EQ(nested[0].as_array()[1].as_string(), "yz");
  EXPECT_TRUE(nested[1].as_array().empty());
  EXPECT_EQ(nested[2].as_array()[0].as_array()[0].as_float(), 2.0);
  EXPECT_EQ(f.get_u32_or("absent", 7u), 7u);
  EXPECT_EQ(f.get_f32_or("absent", 2.5f), 2.5f);
  EXPECT_EQ(f.get_u32_or("test.u8", 7u), 200u);
  EXPECT_EQ(f.get_string_or("absent", "d"), "d");
  EXPECT_EQ(f.find("absent"), nullptr);
  expect_same_metadata(w, f);
}

TEST(GgufRoundTrip, Tensors) {
  const GgufFile f = GgufFile::from_memory(make_fixture_writer().to_bytes(), "fixture.gguf");
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.tensors()[0].name, "token_embd.weight");  // file order
  const TensorInfo& emb = f.tensor("token_embd.weight");
  EXPECT_EQ(emb.type, TensorType::F32);
  EXPECT_EQ(emb.dims, (std::vector<uint64_t>{64, 3}));
  EXPECT_EQ(emb.n_elements(), 192u);
  EXPECT_EQ(emb.n_rows(), 3u);
  EXPECT_EQ(emb.n_bytes(), 768u);
  for (int i = 0; i < 192; ++i) {
    float x;
    std::memcpy(&x, emb.data + 4 * i, 4);
    ASSERT_EQ(x, std::sin(0.1f * static_cast<float>(i)));
  }
  const TensorInfo& q = f.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, TensorType::F16);
  for (int i = 0; i < 64; ++i) {
    uint16_t hbits;
    std::memcpy(&hbits, q.data + 2 * i, 2);
    ASSERT_EQ(fp16_to_fp32(hbits), static_cast<float>(i) * 0.25f - 3.0f);  // exact in fp16
  }
  const TensorInfo& up = f.tensor("blk.0.ffn_up.weight");
  EXPECT_EQ(up.type, TensorType::BF16);
  uint16_t b15;
  std::memcpy(&b15, up.data + 30, 2);
  EXPECT_EQ(bf16_to_fp32(b15), 15.0f);
  const TensorInfo& k = f.tensor("blk.0.attn_k.weight");
  EXPECT_EQ(k.type, TensorType::Q8_0);
  EXPECT_EQ(k.n_bytes(), 68u);
  EXPECT_EQ(k.n_rows(), 2u);
  EXPECT_EQ(k.data[1], 0x3c);
  EXPECT_EQ(static_cast<int8_t>(k.data[34 + 2]), -16);
  const TensorInfo& ids = f.tensor("ids");
  EXPECT_EQ(ids.data[19], static_cast<uint8_t>(19 * 7));
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(t.offset % f.alignment(), 0u) << t.name;
    EXPECT_EQ((f.data_offset() + t.offset) % f.alignment(), 0u) << t.name;
    EXPECT_EQ(t.data, f.bytes() + f.data_offset() + t.offset);
  }
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
}

TEST(GgufRoundTrip, Alignments) {
  for (uint64_t a : {1u, 8u, 32u, 64u, 4096u}) {
    const GgufFile f = GgufFile::from_memory(make_fixture_writer(a).to_bytes(), "aligned.gguf");
    EXPECT_EQ(f.alignment(), a);
    EXPECT_EQ(f.data_offset() % a, 0u);
    for (const auto& t : f.tensors()) EXPECT_EQ(t.offset % a, 0u);
    EXPECT_EQ(f.tensor("ids").data[5], 35);
    if (a != 32) {
      EXPECT_EQ(f.get_u32("general.alignment"), a);
    }
  }
}

TEST(GgufRoundTrip, MetadataOnlyFile) {
  GgufWriter w;
  w.set("a", Value::u32(1));
  w.set("a", Value::string("replaced"));  // set() replaces in place
  const GgufFile f = GgufFile::from_memory(w.to_bytes(), "meta.gguf");
  ASSERT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.get_string("a"), "replaced");
  EXPECT_TRUE(f.tensors().empty());
}

TEST(GgufRoundTrip, WriteAndMapFromDisk) {
  const auto path = std::filesystem::path(::testing::TempDir()) / "tessera_gguf_roundtrip.gguf";
  make_fixture_writer().write(path.string());
  {
    GgufFile f = GgufFile::open(path.string());
    EXPECT_EQ(f.path(), path.string());
    EXPECT_EQ(f.file_size(), std::filesystem::file_size(path));
    GgufFile moved = std::move(f);  // data pointers stay valid across moves
    EXPECT_EQ(moved.tensor("ids").data[19], static_cast<uint8_t>(19 * 7));
    EXPECT_EQ(moved.get_string("general.architecture"), "llama");
  }
  std::filesystem::remove(path);
}

TEST(GgufTypes, TraitsAndNames) {
  EXPECT_EQ(type_name(TensorType::Q4_K), "Q4_K");
  EXPECT_EQ(type_name(static_cast<TensorType>(4)), "unknown(4)");
  EXPECT_EQ(type_traits(static_cast<TensorType>(99)), nullptr);
  EXPECT_EQ(type_from_name("q4_k"), TensorType::Q4_K);
  EXPECT_EQ(type_from_name("TQ2_0"), TensorType::TQ2_0);
  EXPECT_EQ(type_from_name("q4_2"), std::nullopt);
  EXPECT_EQ(row_bytes(TensorType::Q4_0, 64), 36u);
  EXPECT_EQ(row_bytes(TensorType::Q6_K, 512), 420u);
  EXPECT_EQ(row_bytes(TensorType::F16, 3), 6u);
  EXPECT_THROW(row_bytes(TensorType::Q4_0, 33), GgufError);
  EXPECT_THROW(row_bytes(TensorType::F32, UINT64_MAX), GgufError);
}

std::filesystem::path models_dir() {
  if (const char* env = std::getenv("TESSERA_MODELS_DIR")) return env;
  return std::filesystem::path(TESSERA_SOURCE_DIR) / ".." / "shared" / "models";
}

TEST(GgufRealModel, Stories260K) {
  const auto path = models_dir() / "stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  const GgufFile f = GgufFile::open(path.string());
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_u32("llama.block_count"), 5u);
  EXPECT_EQ(f.get_u32("llama.embedding_length"), 64u);
  EXPECT_EQ(f.get_array("tokenizer.ggml.tokens").size(), 512u);
  EXPECT_EQ(f.tensors().size(), 48u);
  const TensorInfo& emb = f.tensor("token_embd.weight");
  EXPECT_EQ(emb.type, TensorType::F32);
  EXPECT_EQ(emb.dims, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(f.find_tensor("blk.4.attn_q.weight") != nullptr, true);
  EXPECT_EQ(f.find_tensor("blk.5.attn_q.weight"), nullptr);
}

}  // namespace
}  // namespace tessera::gguf
