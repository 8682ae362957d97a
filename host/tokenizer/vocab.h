// The plain description of a tokenizer vocabulary (what GGUF's tokenizer.ggml.* keys hold), so
// tools and tests can build a Tokenizer without a file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::tokenizer {

// `tokenizer.ggml.model`: "llama" is SentencePiece-style (score-driven merges, <0xXX> byte
// fallback, spaces as U+2581), "gpt2" is byte-level BPE (ranked merges over GPT-2's byte alphabet).
enum class TokenizerModel { kSpm, kBpe };

// `tokenizer.ggml.token_type` values (llama.cpp's numbering).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

inline constexpr int32_t kNoToken = -1;

struct Vocab {
  TokenizerModel model = TokenizerModel::kSpm;
  std::string pre = "default";      // `tokenizer.ggml.pre`; BPE only ("" means "default")
  std::vector<std::string> tokens;  // id -> text (SPM: U+2581 for spaces; BPE: GPT-2 byte alphabet)
  std::vector<float> scores;        // SPM merge priorities; empty = all 0
  std::vector<TokenType> types;     // empty = all kNormal
  std::vector<std::string> merges;  // BPE: "left right", highest priority first
  int32_t bos_id = kNoToken;
  int32_t eos_id = kNoToken;
  int32_t eot_id = kNoToken;  // kNoToken: detected from the token texts as llama.cpp does
  int32_t eom_id = kNoToken;  // likewise
  // Fill-in-the-middle pad / repository / file-separator tokens: they end generation. kNoToken:
  // detected from the token texts as llama.cpp does.
  int32_t fim_pad_id = kNoToken;
  int32_t fim_rep_id = kNoToken;
  int32_t fim_sep_id = kNoToken;
  int32_t unk_id = kNoToken;
  int32_t pad_id = kNoToken;
  int32_t sep_id = kNoToken;
  bool add_bos = false;           // encode(add_special=true) prepends bos_id
  bool add_eos = false;           // ... and appends eos_id
  bool add_space_prefix = false;  // SPM: a space is put in front of text (and after special tokens)
  // Phi-3: a matched special token swallows the white space after it (except <unk>, <s>,
  // <|endoftext|>); llama.cpp sets this from the model name.
  bool special_tokens_rstrip = false;
};

}  // namespace tessera::tokenizer
