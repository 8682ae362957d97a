// Tokenizer behaviour on small hand-built vocabularies: BPE merge order, byte-level mapping, SPM
// scores and byte fallback, special-token splitting, BOS/EOS/EOG handling, decoding, bad input.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "host/tokenizer/tokenizer.h"

namespace tessera::tokenizer {
namespace {

using Ids = std::vector<int32_t>;

// Byte-level BPE over a tiny alphabet. Ids: 0 <|endoftext|>, 1 a, 2 b, 3 c, 4 ab, 5 bc, 6 Ġ, 7 Ġa,
// 8 <tool> (user-defined), 9 <|im_end|>, 10 <x>, 11 <x>b (user-defined), 12 Ċ (newline).
Vocab bpe_vocab(std::vector<std::string> merges) {
  Vocab v;
  v.model = TokenizerModel::kBpe;
  v.pre = "gpt-2";
  v.tokens = {"<|endoftext|>", "a",      "b",          "c",   "ab",   "bc",      "\xC4\xA0",
              "\u0120a",       "<tool>", "<|im_end|>", "<x>", "<x>b", "\xC4\x8A"};
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[0] = TokenType::kControl;
  v.types[8] = TokenType::kUserDefined;
  v.types[9] = TokenType::kControl;
  v.types[10] = TokenType::kUserDefined;
  v.types[11] = TokenType::kUserDefined;
  v.merges = std::move(merges);
  v.bos_id = 0;
  v.eos_id = 0;
  return v;
}

TEST(BpeTest, MergesApplyInRankOrder) {
  const Tokenizer first_ab(bpe_vocab({"a b", "b c", "\xC4\xA0 a"}));
  EXPECT_EQ(first_ab.encode("abc", false, false), (Ids{4, 3}));
  const Tokenizer first_bc(bpe_vocab({"b c", "a b", "\xC4\xA0 a"}));
  EXPECT_EQ(first_bc.encode("abc", false, false), (Ids{1, 5}));
  // Within one word the leftmost of equal-rank pairs merges first: "abab" -> ab ab.
  EXPECT_EQ(first_ab.encode("abab", false, false), (Ids{4, 4}));
}

// o200k's pre-tokenizer (tokenizer.ggml.pre "gpt-4o") decides which pairs may merge: "abAB" is
// two words there ("ab", "AB"), one under Llama 3's letter runs, so the merge "b A" applies only
// in the latter.
TEST(BpeTest, Gpt4oPreTokenizerSplitsWordsAtCaseChanges) {
  Vocab v;
  v.model = TokenizerModel::kBpe;
  v.tokens = {"<|endoftext|>", "a", "b", "A", "B", "bA", "\xC4\xA0", "\u0120A", "1", "2", "12"};
  v.types.assign(v.tokens.size(), TokenType::kNormal);
  v.types[0] = TokenType::kControl;
  v.merges = {"b A", "\xC4\xA0 A", "1 2"};
  v.bos_id = 0;
  v.eos_id = 0;
  v.pre = "gpt-4o";
  const Tokenizer o200k(v);
  EXPECT_EQ(o200k.encode("abAB", false, false), (Ids{1, 2, 3, 4}));
  EXPECT_EQ(o200k.encode("ab AB", false, false), (Ids{1, 2, 7, 4}));
  EXPECT_EQ(o200k.encode("1212", false, false), (Ids{10, 8, 9}));  // digits in threes: 121 | 2
  v.pre = "llama-bpe";
  const Tokenizer llama3(v);
  EXPECT_EQ(llama3.encode("abAB", false, false), (Ids{1, 5, 4}));
}

TEST(BpeTest, SpacesAndNewlinesUseTheGpt2Alphabet) {
  const Tokenizer tok(bpe_vocab({"a b", "\xC4\xA0 a"}));
  EXPECT_EQ(tok.encode("ab a", false, false), (Ids{4, 7}));
  EXPECT_EQ(tok.encode("a\n", false, false), (Ids{1, 12}));
  EXPECT_EQ(tok.token_to_piece(7), " a");
  EXPECT_EQ(tok.token_to_piece(12), "\n");
  EXPECT_EQ(tok.decode({4, 7, 12}), "ab a\n");
}

TEST(BpeTest, BytesWithoutATokenAreDroppedAsInLlamaCpp) {
  const Tokenizer tok(bpe_vocab({"a b"}));
  EXPECT_EQ(tok.encode("adb", false, false), (Ids{1, 2}));
}

TEST(BpeTest, UserDefinedTokensAreAlwaysMatchedControlOnlyWithParseSpecial) {
  const Tokenizer tok(bpe_vocab({"a b"}));
  EXPECT_EQ(tok.encode("a<tool>b", false, false), (Ids{1, 8, 2}));
  // "<|im_end|>" is control: plain text unless parse_special (its characters have no tokens here).
  EXPECT_EQ(tok.encode("a<|im_end|>", false, false), (Ids{1}));
  EXPECT_EQ(tok.encode("a<|im_end|>", false, true), (Ids{1, 9}));
  EXPECT_EQ(tok.encode("<|im_end|><|im_end|>ab", false, true), (Ids{9, 9, 4}));
  // The longest special token wins: "<x>b" is one token, not "<x>" + "b".
  EXPECT_EQ(tok.encode("<x>b<x>", false, false), (Ids{11, 10}));
}

TEST(BpeTest, SpecialIdsAndEndOfGeneration) {
  Vocab v = bpe_vocab({"a b"});
  v.add_bos = true;
  const Tokenizer tok(std::move(v));
  EXPECT_EQ(tok.bos(), 0);
  EXPECT_EQ(tok.eos(), 0);
  EXPECT_EQ(tok.encode("ab", true, false), (Ids{0, 4}));
  EXPECT_EQ(tok.encode("ab", false, false), (Ids{4}));
  // Without metadata the EOT is found by text, as llama.cpp does: <|im_end|> before <|endoftext|>.
  EXPECT_EQ(tok.eot(), 9);
  EXPECT_TRUE(tok.is_eog(0));
  EXPECT_TRUE(tok.is_eog(9));  // <|im_end|> ends generation by its text
  EXPECT_FALSE(tok.is_eog(4));
  EXPECT_EQ(tok.vocab_size(), 13u);
}

TEST(BpeTest, DecodeDropsControlTokensUnlessAsked) {
  const Tokenizer tok(bpe_vocab({"a b"}));
  EXPECT_EQ(tok.decode({0, 4, 8, 9}), "ab<tool>");
  EXPECT_EQ(tok.decode({0, 4, 8, 9}, true), "<|endoftext|>ab<tool><|im_end|>");
  EXPECT_EQ(tok.token_to_piece(9, false), "");
  EXPECT_EQ(tok.token_to_piece(9, true), "<|im_end|>");
}

// SentencePiece-style: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then ▁ a b ab ▁a [▁ab] and a
// control token <|end|>.
Vocab spm_vocab(float score_ab, float score_space_a, bool with_space_ab) {
  Vocab v;
  v.model = TokenizerModel::kSpm;
  v.tokens = {"<unk>", "<s>", "</s>"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  static const char* kHex = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">");
    v.types.push_back(TokenType::kByte);
  }
  v.scores.assign(v.tokens.size(), 0.0f);
  auto add = [&](std::string text, float score, TokenType type = TokenType::kNormal) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("\xE2\x96\x81", -1.0f);  // 259 ▁
  add("a", -2.0f);             // 260
  add("b", -3.0f);             // 261
  add("ab", score_ab);         // 262
  add("\xE2\x96\x81"
      "a",
      score_space_a);                         // 263 ▁a
  add("<|end|>", 0.0f, TokenType::kControl);  // 264
  if (with_space_ab)
    add("\xE2\x96\x81"
        "ab",
        -0.5f);  // 265 ▁ab
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

constexpr int32_t kByte0 = 3;

TEST(SpmTest, HighestScoringPairMergesFirst) {
  const Tokenizer ab_first(spm_vocab(-4.0f, -5.0f, false));
  EXPECT_EQ(ab_first.encode("ab", false, false), (Ids{259, 262}));  // ▁ + ab
  const Tokenizer space_a_first(spm_vocab(-5.0f, -4.0f, false));
  EXPECT_EQ(space_a_first.encode("ab", false, false), (Ids{263, 261}));  // ▁a + b
  const Tokenizer whole(spm_vocab(-4.0f, -5.0f, true));
  EXPECT_EQ(whole.encode("ab", false, false), (Ids{265}));
}

TEST(SpmTest, ByteFallbackAndRoundTrip) {
  const Tokenizer tok(spm_vocab(-4.0f, -5.0f, true));
  const std::string text = "a\xC3\xA9 b\n";  // "aé b\n"
  const Ids ids = tok.encode(text, false, false);
  EXPECT_EQ(ids, (Ids{263, kByte0 + 0xC3, kByte0 + 0xA9, 259, 261, kByte0 + 0x0A}));
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.token_to_piece(kByte0 + 0xC3), "\xC3");
  EXPECT_EQ(tok.token_type(kByte0), TokenType::kByte);
}

TEST(SpmTest, BosEosAndSpacePrefix) {
  Vocab v = spm_vocab(-4.0f, -5.0f, true);
  v.add_eos = true;
  const Tokenizer tok(std::move(v));
  EXPECT_EQ(tok.encode("ab", true, false), (Ids{1, 265, 2}));
  EXPECT_EQ(tok.encode("", true, false), (Ids{1, 2}));
  EXPECT_EQ(tok.encode("", false, false), (Ids{}));
  EXPECT_EQ(tok.decode({1, 265, 2}), "ab");
  EXPECT_EQ(tok.decode({1, 265, 2}, true), "<s> ab</s>");
}

TEST(SpmTest, SpecialTokensAndTheSpaceAfterThem) {
  const Tokenizer tok(spm_vocab(-4.0f, -5.0f, true));
  // With parse_special the control token is cut out and the text after it gets the space prefix
  // again.
  EXPECT_EQ(tok.encode("ab<|end|>ab", false, true), (Ids{265, 264, 265}));
  // Without it, "<|end|>" is ordinary text: its characters fall back to bytes.
  const Ids plain = tok.encode("<|end|>", false, false);
  ASSERT_EQ(plain.size(), 8u);  // ▁ and the 7 bytes of "<|end|>"
  EXPECT_EQ(plain[0], 259);
  EXPECT_EQ(plain[1], kByte0 + '<');
}

TEST(SpmTest, RstripSpecialTokensSwallowFollowingSpace) {
  Vocab v = spm_vocab(-4.0f, -5.0f, true);
  v.special_tokens_rstrip = true;  // Phi-3's rule
  const Tokenizer tok(std::move(v));
  EXPECT_EQ(tok.encode("<|end|>  ab", false, true), (Ids{264, 265}));
}

TEST(TokenizerErrorTest, BadVocabulariesAreRejectedWithTheirReason) {
  auto message_of = [](Vocab v) -> std::string {
    try {
      Tokenizer t(std::move(v));
    } catch (const TokenizerError& e) {
      return e.what();
    }
    return "";
  };
  Vocab unknown_pre = bpe_vocab({"a b"});
  unknown_pre.pre = "mystery-pre";
  const std::string msg = message_of(unknown_pre);
  EXPECT_NE(msg.find("'mystery-pre'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama-bpe"), std::string::npos) << msg;

  Vocab bad_merge = bpe_vocab({"ab"});
  EXPECT_NE(message_of(bad_merge).find("tokenizer.ggml.merges"), std::string::npos);

  Vocab duplicate = bpe_vocab({});
  duplicate.tokens[3] = "a";
  EXPECT_NE(message_of(duplicate).find("repeats"), std::string::npos);

  Vocab bad_id = bpe_vocab({});
  bad_id.eos_id = 99;
  EXPECT_NE(message_of(bad_id).find("eos_token_id"), std::string::npos);

  Vocab short_scores = spm_vocab(-4.0f, -5.0f, true);
  short_scores.scores.pop_back();
  EXPECT_NE(message_of(short_scores).find("tokenizer.ggml.scores"), std::string::npos);

  EXPECT_NE(message_of(Vocab{}).find("empty"), std::string::npos);
}

TEST(TokenizerErrorTest, IdsOutsideTheVocabularyThrow) {
  const Tokenizer tok(bpe_vocab({}));
  EXPECT_THROW(tok.decode({1, 13}), TokenizerError);
  EXPECT_THROW(tok.token_to_piece(-1), TokenizerError);
}

}  // namespace
}  // namespace tessera::tokenizer
