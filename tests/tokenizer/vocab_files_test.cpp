// Real vocabularies (llama.cpp's ggml-vocab-*.gguf) against llama.cpp's own test vectors, plus
// from_gguf's handling of metadata on small files written with GgufWriter.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "host/gguf/gguf.h"
#include "host/tokenizer/tokenizer.h"
#include "host/tokenizer/unicode.h"

namespace tessera::tokenizer {
namespace {

using Ids = std::vector<int32_t>;

std::string models_dir() {
  if (const char* dir = std::getenv("TESSERA_MODELS_DIR")) return dir;
  return std::string(TESSERA_SOURCE_DIR) + "/../shared/models";
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct TestVector {
  std::string text;
  Ids ids;
};

// Reads NAME.inp / NAME.out the way llama.cpp's test-tokenizer-0 does: inputs separated by
// "\n__ggml_vocab_test__\n" (nothing else stripped), one line of space-separated ids per input.
std::vector<TestVector> read_vectors(const std::string& vocab_path) {
  const std::string inp = read_all(vocab_path + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> inputs;
  size_t pos = 0;
  while (pos < inp.size()) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) {
      inputs.push_back(inp.substr(pos));
      break;
    }
    inputs.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::istringstream out(read_all(vocab_path + ".out"));
  std::vector<TestVector> vectors;
  std::string line;
  for (const std::string& text : inputs) {
    if (!std::getline(out, line)) break;
    TestVector v{text, {}};
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) v.ids.push_back(id);
    vectors.push_back(std::move(v));
  }
  EXPECT_EQ(vectors.size(), inputs.size()) << vocab_path << ": .inp and .out disagree in length";
  return vectors;
}

std::string vocab_path(const std::string& name) {
  return models_dir() + "/ggml-vocab-" + name + ".gguf";
}

// One vocabulary with its test vectors: `vectors` + ".inp"/".out".
struct VocabCase {
  const char* name;
  std::string (*gguf_path)();
  std::string (*vectors)();
};

std::string repo_path(const std::string& relative) {
  return std::string(TESSERA_SOURCE_DIR) + "/" + relative;
}

// llama.cpp's vocabulary files with their own vectors, and the project's trained model (byte-level
// BPE with the qwen2 pre-tokenizer, the only qwen2 vocabulary here) with vectors that llama.cpp's
// llama_tokenize produced from it (tests/tokenizer/data/README.md).
const VocabCase kVocabCases[] = {
    {"llama_spm", [] { return vocab_path("llama-spm"); }, [] { return vocab_path("llama-spm"); }},
    {"phi_3", [] { return vocab_path("phi-3"); }, [] { return vocab_path("phi-3"); }},
    {"gpt_2", [] { return vocab_path("gpt-2"); }, [] { return vocab_path("gpt-2"); }},
    {"starcoder", [] { return vocab_path("starcoder"); }, [] { return vocab_path("starcoder"); }},
    {"deepseek_coder", [] { return vocab_path("deepseek-coder"); },
     [] { return vocab_path("deepseek-coder"); }},
    {"tessera_kjv_moe_qwen2",
     [] { return repo_path("models/tessera-kjv-moe/tessera-kjv-moe-f16.gguf"); },
     [] { return repo_path("tests/tokenizer/data/tessera-kjv-moe"); }},
};

class VocabFileTest : public testing::TestWithParam<VocabCase> {
 protected:
  void SetUp() override {
    path_ = GetParam().gguf_path();
    vectors_ = GetParam().vectors();
    if (!std::filesystem::exists(path_)) {
      GTEST_SKIP() << path_ << " not found (set TESSERA_MODELS_DIR)";
    }
  }
  std::string path_;
  std::string vectors_;
};

TEST_P(VocabFileTest, EncodesLlamaCppTestVectorsExactly) {
  const auto file = gguf::GgufFile::open(path_);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const auto vectors = read_vectors(vectors_);
  ASSERT_FALSE(vectors.empty());
  size_t passed = 0;
  for (const auto& v : vectors) {
    // As test-tokenizer-0: no BOS/EOS, special tokens not parsed.
    const Ids got = tok.encode(v.text, false, false);
    EXPECT_EQ(got, v.ids) << "input '" << v.text << "'";
    passed += got == v.ids;
  }
  std::cout << "[ vocab    ] " << GetParam().name << ": " << passed << "/" << vectors.size()
            << " inputs encode to llama.cpp's ids\n";
  RecordProperty("passed", static_cast<int>(passed));
  RecordProperty("total", static_cast<int>(vectors.size()));
}

TEST_P(VocabFileTest, DecodeInvertsEncode) {
  const auto file = gguf::GgufFile::open(path_);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  for (const auto& v : read_vectors(vectors_)) {
    EXPECT_EQ(tok.decode(tok.encode(v.text, false, false)), v.text);
    EXPECT_EQ(tok.decode(tok.encode(v.text, true, false)), v.text);
  }
}

// Every byte has a normal token of its own (GPT-2 alphabet). Not so in starcoder (no tokens for
// bytes that never occur in UTF-8) nor deepseek-coder (those bytes are user-defined tokens that
// render as their text): there, as in llama.cpp, invalid UTF-8 does not survive a round trip.
bool maps_every_byte(const Tokenizer& tok) {
  if (tok.model() != TokenizerModel::kBpe) return false;
  for (int b = 0; b < 256; ++b) {
    std::string text;
    append_utf8(text, byte_to_gpt2_codepoint(static_cast<uint8_t>(b)));
    const int32_t id = tok.find_token(text);
    if (id == kNoToken || tok.token_type(id) != TokenType::kNormal) return false;
  }
  return true;
}

// Random text comes back unchanged: valid UTF-8 for every vocabulary, any bytes at all where every
// byte has a token (SPM is left out there: an invalid lead byte swallows the U+2581 that stands for
// a following space, in llama.cpp as here). Seeded, so a failure reproduces.
TEST_P(VocabFileTest, RandomTextRoundTrip) {
  const auto file = gguf::GgufFile::open(path_);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const bool any_bytes = maps_every_byte(tok);
  static const char* kPieces[] = {"a",
                                  "b",
                                  "c",
                                  " ",
                                  "  ",
                                  "\n",
                                  "\t",
                                  "\0",
                                  "7",
                                  "'s",
                                  "\xC3\xA9",
                                  "\xE4\xB8\xAD",
                                  "\xF0\x9F\xA6\x99",
                                  "<",
                                  "|>"};
  std::mt19937 rng(1234);
  for (int round = 0; round < 200; ++round) {
    std::string text;
    const size_t n = rng() % 40;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t r = rng();
      if (any_bytes && r % 5 == 0) {
        text.push_back(static_cast<char>(r >> 8));
      } else {
        text += kPieces[(r >> 8) % std::size(kPieces)];
      }
    }
    // SPM writes spaces as U+2581, so a literal U+2581 in the input would decode as a space.
    if (tok.model() == TokenizerModel::kSpm && text.find("\xE2\x96\x81") != std::string::npos)
      continue;
    EXPECT_EQ(tok.decode(tok.encode(text, false, false)), text) << "round " << round;
  }
}

// A Tokenizer is shared between threads: concurrent encodes give the single-threaded result.
TEST_P(VocabFileTest, ConcurrentEncodesAgree) {
  const auto file = gguf::GgufFile::open(path_);
  const Tokenizer tok = Tokenizer::from_gguf(file);
  const auto vectors = read_vectors(vectors_);
  std::vector<std::vector<Ids>> results(4);
  std::vector<std::thread> threads;
  threads.reserve(results.size());
  for (auto& r : results) {
    threads.emplace_back([&tok, &vectors, &r] {
      for (const auto& v : vectors) r.push_back(tok.encode(v.text, true, true));
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < vectors.size(); ++i) {
    const Ids expected = tok.encode(vectors[i].text, true, true);
    for (const auto& r : results) EXPECT_EQ(r[i], expected);
  }
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, VocabFileTest, testing::ValuesIn(kVocabCases),
                         [](const testing::TestParamInfo<VocabCase>& info) {
                           return std::string(info.param.name);
                         });

// Expected ids below were produced by llama.cpp's llama_tokenize (libllama, vocab_only) on the same
// files; they cover what test-tokenizer-0 does not: add_special and parse_special.
Tokenizer load_file(const std::string& path) {
  if (!std::filesystem::exists(path)) throw std::runtime_error(path + " not found");
  return Tokenizer::from_gguf(gguf::GgufFile::open(path));
}

class SpecialTokensTest : public testing::Test {
 protected:
  Tokenizer load(const std::string& name) { return load_file(vocab_path(name)); }
  void SetUp() override {
    if (!std::filesystem::exists(models_dir())) GTEST_SKIP() << models_dir() << " not found";
  }
};

TEST_F(SpecialTokensTest, Phi3ChatMarkupSwallowsTheNewlineAfterSpecialTokens) {
  const Tokenizer tok = load("phi-3");
  const std::string chat = "<|user|>\nHello world<|end|>\n<|assistant|>";
  EXPECT_EQ(tok.encode(chat, true, true), (Ids{1, 32010, 15043, 3186, 32007, 32001}));
  EXPECT_EQ(tok.encode(chat, false, false).size(), 20u);  // markup tokenized as text
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 32000);
  EXPECT_EQ(tok.eot(), 32007);
  EXPECT_EQ(tok.eog_ids(), (Ids{2, 32000, 32007}));
}

TEST_F(SpecialTokensTest, LlamaSpmBosAndSpacePrefixAfterSpecialTokens) {
  const Tokenizer tok = load("llama-spm");
  EXPECT_EQ(tok.encode("<s>hi</s> there", true, true), (Ids{1, 1, 7251, 2, 29871, 727}));
  EXPECT_EQ(tok.encode("<s>hi</s> there", true, false),
            (Ids{1, 529, 29879, 29958, 2918, 829, 29879, 29958, 727}));
  EXPECT_TRUE(tok.is_eog(2));
  EXPECT_FALSE(tok.is_eog(1));
}

TEST_F(SpecialTokensTest, Gpt2EndOfText) {
  const Tokenizer tok = load("gpt-2");
  EXPECT_EQ(tok.encode("a<|endoftext|>b", false, true), (Ids{64, 50256, 65}));
  EXPECT_EQ(tok.encode("a<|endoftext|>b", false, false),
            (Ids{64, 27, 91, 437, 1659, 5239, 91, 29, 65}));
  EXPECT_EQ(tok.encode("a", true, false), (Ids{64}));  // gpt-2 does not add BOS
  EXPECT_EQ(tok.decode({64, 50256, 65}), "ab");
  EXPECT_EQ(tok.decode({64, 50256, 65}, true), "a<|endoftext|>b");
}

TEST_F(SpecialTokensTest, StarcoderFillInTheMiddle) {
  const Tokenizer tok = load("starcoder");
  EXPECT_EQ(tok.encode("<fim_prefix>def f():<fim_suffix>\n<fim_middle>", false, true),
            (Ids{1, 610, 315, 2284, 3, 222, 2}));
  EXPECT_EQ(tok.eog_ids(), (Ids{0, 4}));  // <|endoftext|> and <fim_pad>
}

TEST_F(SpecialTokensTest, DeepseekCoderUserDefinedTokensAndBos) {
  const Tokenizer tok = load("deepseek-coder");
  EXPECT_EQ(tok.encode("Hello \xC3\xB5 world", true, false), (Ids{32013, 17535, 207, 32000, 1835}));
  EXPECT_EQ(tok.encode("<\uFF5Cbegin\u2581of\u2581sentence\uFF5C>Hi<|EOT|>", true, true),
            (Ids{32013, 32013, 11041, 32021}));
  EXPECT_EQ(tok.token_type(32000), TokenType::kUserDefined);
}

TEST_F(SpecialTokensTest, Stories260kPromptAsInSharedModelsSources) {
  const Tokenizer tok = load_file(models_dir() + "/stories260K.gguf");
  EXPECT_EQ(tok.encode("Once upon a time", true, false), (Ids{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok.encode("Lily saw a big dog. \"Hi!\" she said.\nThe end.", true, false),
            (Ids{1,   317, 394, 261, 370, 400, 428, 426, 313, 440, 417,
                 443, 436, 358, 336, 426, 13,  434, 260, 344, 264, 426}));
  EXPECT_EQ(tok.pad(), kNoToken);  // stored as 0xFFFFFFFF: no padding token
}

TEST(KjvModelTest, AddsBosAndEndsAtEos) {
  const std::string path = repo_path("models/tessera-kjv-moe/tessera-kjv-moe-f16.gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not found";
  const Tokenizer tok = load_file(path);
  EXPECT_EQ(tok.pre_tokenizer(), PreTokenizerKind::kQwen2);
  EXPECT_EQ(tok.encode("<|im_start|>x", true, true),
            (Ids{4094, 60, 124, 312, 95, 314, 850, 124, 62, 120}));
  EXPECT_EQ(tok.eog_ids(), (Ids{4095}));
}

// from_gguf on small files written in memory.
gguf::GgufWriter tiny_bpe_file() {
  gguf::GgufWriter w;
  w.set("general.name", gguf::Value::string("tiny"));
  w.set("tokenizer.ggml.model", gguf::Value::string("gpt2"));
  w.set("tokenizer.ggml.pre", gguf::Value::string("llama-bpe"));
  w.set("tokenizer.ggml.tokens", gguf::Value::strings({"a", "b", "ab", "<|end_of_text|>"}));
  w.set("tokenizer.ggml.token_type", gguf::Value::i32s({1, 1, 1, 3}));
  w.set("tokenizer.ggml.merges", gguf::Value::strings({"a b"}));
  w.set("tokenizer.ggml.bos_token_id", gguf::Value::u32(3));
  w.set("tokenizer.ggml.eos_token_id", gguf::Value::u32(3));
  return w;
}

Tokenizer load_memory(const gguf::GgufWriter& w) {
  return Tokenizer::from_gguf(gguf::GgufFile::from_memory(w.to_bytes(), "tiny.gguf"));
}

std::string from_gguf_error(const gguf::GgufWriter& w) {
  try {
    load_memory(w);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(FromGgufTest, MetadataFlagsAndPreTokenizerDefaults) {
  gguf::GgufWriter w = tiny_bpe_file();
  const Tokenizer llama3 = load_memory(w);  // llama-bpe adds BOS unless the file says otherwise
  EXPECT_EQ(llama3.encode("ab", true, false), (Ids{3, 2}));
  EXPECT_EQ(llama3.pre_tokenizer(), PreTokenizerKind::kLlama3);
  EXPECT_TRUE(llama3.is_eog(3));
  w.set("tokenizer.ggml.add_bos_token", gguf::Value::boolean(false));
  w.set("tokenizer.ggml.add_eos_token", gguf::Value::boolean(true));
  const Tokenizer flags = load_memory(w);
  EXPECT_EQ(flags.encode("ab", true, false), (Ids{2, 3}));
  EXPECT_EQ(flags.vocab_size(), 4u);
}

TEST(FromGgufTest, UnsupportedModelAndPreAreNamed) {
  gguf::GgufWriter w = tiny_bpe_file();
  w.set("tokenizer.ggml.model", gguf::Value::string("t5"));
  std::string msg = from_gguf_error(w);
  EXPECT_NE(msg.find("tiny.gguf: tokenizer.ggml.model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'t5'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gpt2"), std::string::npos) << msg;

  w = tiny_bpe_file();
  w.set("tokenizer.ggml.pre", gguf::Value::string("gpt-9"));
  msg = from_gguf_error(w);
  EXPECT_NE(msg.find("tokenizer.ggml.pre"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'gpt-9'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("qwen2"), std::string::npos) << msg;
}

TEST(FromGgufTest, MissingOrShortArraysAreErrors) {
  gguf::GgufWriter w = tiny_bpe_file();
  w.set("tokenizer.ggml.token_type", gguf::Value::i32s({1, 1}));
  EXPECT_NE(from_gguf_error(w).find("tokenizer.ggml.token_type"), std::string::npos);

  gguf::GgufWriter no_merges;
  no_merges.set("tokenizer.ggml.model", gguf::Value::string("gpt2"));
  no_merges.set("tokenizer.ggml.tokens", gguf::Value::strings({"a"}));
  EXPECT_NE(from_gguf_error(no_merges).find("tokenizer.ggml.merges"), std::string::npos);

  gguf::GgufWriter no_tokens;
  no_tokens.set("tokenizer.ggml.model", gguf::Value::string("llama"));
  EXPECT_NE(from_gguf_error(no_tokens).find("tokenizer.ggml.tokens"), std::string::npos);
}

}  // namespace
}  // namespace tessera::tokenizer
