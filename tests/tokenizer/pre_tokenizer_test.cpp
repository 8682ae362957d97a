// Hand-made checks of the pre-tokenizer splits (llama-bpe, qwen2 and gpt-4o have no vocabulary file
// here, so these are their only tests) and of the Unicode helpers they rest on.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "host/tokenizer/pre_tokenizer.h"
#include "host/tokenizer/unicode.h"

namespace tessera::tokenizer {
namespace {

std::vector<std::string> split(const char* pre, std::string_view text) {
  const auto spec = pre_tokenizer_from_name(pre);
  EXPECT_TRUE(spec.has_value()) << pre;
  std::vector<std::string> out;
  if (!spec) return out;
  for (const auto w : pre_tokenize(spec->kind, text)) out.emplace_back(w);
  return out;
}

using Words = std::vector<std::string>;

TEST(UnicodeTest, CategoriesOfSampleCodepoints) {
  EXPECT_TRUE(codepoint_flags('a') & kCpLetter);
  EXPECT_TRUE(codepoint_flags(0x0416) & kCpLetter);  // Ж
  EXPECT_TRUE(codepoint_flags(0x4E2D) & kCpLetter);  // 中
  EXPECT_TRUE(codepoint_flags('7') & kCpNumber);
  EXPECT_TRUE(codepoint_flags(0x0663) & kCpNumber);  // Arabic-Indic three
  EXPECT_TRUE(codepoint_flags(0x00BD) & kCpNumber);  // ½
  EXPECT_TRUE(codepoint_flags(0x216B) & kCpNumber);  // Roman numeral twelve (Nl)
  EXPECT_TRUE(codepoint_flags('!') & kCpPunctuation);
  EXPECT_TRUE(codepoint_flags('$') & kCpSymbol);
  EXPECT_TRUE(codepoint_flags(0x0301) & kCpMark);
  EXPECT_TRUE(codepoint_flags(0x1F999) & kCpSymbol);  // 🦙
  EXPECT_TRUE(codepoint_flags(0x3000) & kCpWhitespace);
  EXPECT_TRUE(codepoint_flags(0x85) & kCpWhitespace);
  EXPECT_FALSE(codepoint_flags(0x200B) & kCpWhitespace);  // zero-width space is Cf, not White_Space
  EXPECT_TRUE(codepoint_flags(0x0378) & kCpUndefined);
  EXPECT_TRUE(codepoint_flags(0x110000) & kCpUndefined);
}

TEST(UnicodeTest, LenientUtf8KeepsInvalidBytes) {
  const std::string text = "a\xC3\xA9\xFF\xE2\x82";  // a, é, a stray byte, a truncated sequence
  const auto chars = decode_utf8(text);
  ASSERT_EQ(chars.size(), 5u);
  EXPECT_EQ(chars[1].cp, 0xE9u);
  EXPECT_EQ(chars[1].length, 2u);
  EXPECT_EQ(chars[2].cp, 0xFFFDu);
  EXPECT_EQ(chars[3].cp, 0xFFFDu);
  EXPECT_EQ(chars[4].offset, 5u);
}

TEST(UnicodeTest, Gpt2ByteAlphabetIsABijection) {
  EXPECT_EQ(byte_to_gpt2_codepoint(' '), 0x120u);   // Ġ
  EXPECT_EQ(byte_to_gpt2_codepoint('\n'), 0x10Au);  // Ċ
  EXPECT_EQ(byte_to_gpt2_codepoint('A'), static_cast<uint32_t>('A'));
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(gpt2_codepoint_to_byte(byte_to_gpt2_codepoint(static_cast<uint8_t>(b))), b);
  }
  EXPECT_EQ(gpt2_codepoint_to_byte(0x20), -1);
}

TEST(PreTokenizerTest, Gpt2) {
  EXPECT_EQ(split("gpt-2", "Hello world"), (Words{"Hello", " world"}));
  EXPECT_EQ(split("gpt-2", "I'm  ok!!\n"), (Words{"I", "'m", " ", " ok", "!!", "\n"}));
  EXPECT_EQ(split("gpt-2", "x   y"), (Words{"x", "  ", " y"}));
  EXPECT_EQ(split("gpt-2", "I'M"), (Words{"I", "'", "M"}));  // contractions are case-sensitive here
  EXPECT_EQ(split("gpt-2", "12345 abc"), (Words{"12345", " abc"}));
  EXPECT_EQ(split("gpt-2", ""), (Words{}));
}

TEST(PreTokenizerTest, Llama3) {
  EXPECT_EQ(split("llama-bpe", "1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(split("llama-bpe", "I'M here"), (Words{"I", "'M", " here"}));
  EXPECT_EQ(split("llama-bpe", "(hello)"), (Words{"(hello", ")"}));
  EXPECT_EQ(split("llama-bpe", "a\n\n  b"), (Words{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(split("llama-bpe", "x  \n y"), (Words{"x", "  \n", " y"}));
  EXPECT_EQ(split("llama-bpe", " ...\n\nz"), (Words{" ...\n\n", "z"}));
  EXPECT_EQ(split("llama-bpe", "   "), (Words{"   "}));
  EXPECT_EQ(split("llama-bpe", "нещо на Български"), (Words{"нещо", " на", " Български"}));
  EXPECT_EQ(split("llama-bpe", "3.14 🦙🦙"), (Words{"3", ".", "14", " 🦙🦙"}));
}

TEST(PreTokenizerTest, Qwen2SplitsEveryDigit) {
  EXPECT_EQ(split("qwen2", "1234 x"), (Words{"1", "2", "3", "4", " x"}));
  EXPECT_EQ(split("qwen2", "We'LL go"), (Words{"We", "'LL", " go"}));
  EXPECT_EQ(split("qwen2", "a\r\n\tb"), (Words{"a", "\r\n", "\tb"}));
}

// o200k (gpt-oss) as llama.cpp's rewrite of its regex: words split at ASCII case changes, a
// contraction kept on its word, digits in threes, no leading contraction alternative. Expected
// words read off the regex [^\r\n\p{L}\p{N}]?U*L+C?|[^\r\n\p{L}\p{N}]?U+L*C?|\p{N}{1,3}|
// ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+ (U: letter not a-z, L: letter not A-Z).
TEST(PreTokenizerTest, Gpt4o) {
  EXPECT_EQ(split("gpt-4o", "Hello World"), (Words{"Hello", " World"}));
  EXPECT_EQ(split("gpt-4o", "helloWorld"), (Words{"hello", "World"}));
  EXPECT_EQ(split("gpt-4o", "HTTPServer ABC"), (Words{"HTTPServer", " ABC"}));  // U* keeps the S
  EXPECT_EQ(split("gpt-4o", "abAB"), (Words{"ab", "AB"}));
  EXPECT_EQ(split("gpt-4o", "I'm don'T"), (Words{"I'm", " don'T"}));
  EXPECT_EQ(split("gpt-4o", "'s"), (Words{"'s"}));  // the quote is the optional prefix
  EXPECT_EQ(split("gpt-4o", "1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(split("gpt-4o", "x/y (z)"), (Words{"x", "/y", " (", "z", ")"}));
  EXPECT_EQ(split("gpt-4o", "a\n\n  b"), (Words{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(split("gpt-4o", " ...\n\nz"), (Words{" ...\n\n", "z"}));
  // Letters outside ASCII are both upper and lower: Ü continues either run; an ASCII capital
  // after it starts the next word.
  EXPECT_EQ(split("gpt-4o", "Ünïcode AÜB"), (Words{"Ünïcode", " AÜ", "B"}));
  EXPECT_EQ(split("gpt-4o", "нещо на Български"), (Words{"нещо", " на", " Български"}));
}

TEST(PreTokenizerTest, Starcoder) {
  EXPECT_EQ(split("starcoder", "x = 123"), (Words{"x", " =", " ", "1", "2", "3"}));
}

TEST(PreTokenizerTest, DeepseekCoder) {
  EXPECT_EQ(split("deepseek-coder", "int x=1;\n"), (Words{"int", " x", "=", "1", ";", "\n"}));
  EXPECT_EQ(split("deepseek-coder", "我想在apple"), (Words{"我想在", "apple"}));
  EXPECT_EQ(split("deepseek-coder", " ...ok"), (Words{" ...", "ok"}));
}

TEST(PreTokenizerTest, Default) {
  EXPECT_EQ(split("default", "a+=1234"), (Words{"a", "+=", "123", "4"}));
}

TEST(PreTokenizerTest, UnknownNameIsNotFound) {
  EXPECT_FALSE(pre_tokenizer_from_name("no-such-pre").has_value());
  EXPECT_NE(supported_pre_tokenizer_names().find("llama-bpe"), std::string::npos);
}

// The words always cover the input exactly, whatever the bytes are.
TEST(PreTokenizerTest, WordsCoverTheText) {
  const std::string text = "x\xFF\xC3 y\xE2\x82\xAC 12\t\t\n";
  for (const char* pre :
       {"default", "gpt-2", "llama-bpe", "qwen2", "starcoder", "deepseek-coder", "gpt-4o"}) {
    std::string joined;
    for (const auto& w : split(pre, text)) {
      EXPECT_FALSE(w.empty()) << pre;
      joined += w;
    }
    EXPECT_EQ(joined, text) << pre;
  }
}

}  // namespace
}  // namespace tessera::tokenizer
