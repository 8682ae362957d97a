// Tokenizer: encodes text to token ids and back for SentencePiece-style ("llama") and byte-level
// BPE
// ("gpt2") vocabularies, matching llama.cpp's llama_tokenize/llama_token_to_piece.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "host/common/error.h"
#include "host/tokenizer/pre_tokenizer.h"
#include "host/tokenizer/vocab.h"

namespace tessera::gguf {
class GgufFile;
}

namespace tessera::tokenizer {

// Bad vocabulary or bad request; the message names the field/value at fault.
struct TokenizerError : TesseraError {
  using TesseraError::TesseraError;
};

// Immutable after construction: every const method is safe to call from several threads at once.
class Tokenizer {
 public:
  // Validates the vocabulary (throws TokenizerError naming the problem: unknown pre-tokenizer,
  // sizes that disagree, special ids out of range, duplicate token texts, malformed merges).
  explicit Tokenizer(Vocab vocab);

  // Reads tokenizer.ggml.* (model, pre, tokens, scores, token_type, merges, special ids, add_bos/
  // add_eos/add_space_prefix) with llama.cpp's defaults. Throws TokenizerError naming the file and
  // key: unsupported model or pre-tokenizer (listing the supported ones), missing merges, short
  // arrays; gguf::GgufError for a missing or mistyped key.
  static Tokenizer from_gguf(const gguf::GgufFile& file);

  // Text -> ids. add_special: BOS/EOS as the vocabulary's add_bos/add_eos say. parse_special:
  // control tokens written in the text (e.g. "<|im_end|>") become their ids; user-defined tokens
  // are always matched, as llama.cpp does.
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;

  // Ids -> text. Control/unknown tokens are dropped unless render_special. For SPM vocabularies
  // with add_space_prefix, the space encode put in front of the text is removed again (also when a
  // leading BOS precedes it), so decode(encode(s, ...)) == s for text without special tokens.
  // Throws TokenizerError for an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids, bool render_special = false) const;

  // The bytes one token stands for (may be part of a UTF-8 character). render_special=false gives
  // "" for control/unknown tokens. Throws TokenizerError for an id outside the vocabulary.
  std::string token_to_piece(int32_t id, bool render_special = true) const;

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t eot() const { return eot_; }
  int32_t eom() const { return eom_; }
  int32_t unk() const { return unk_; }
  int32_t pad() const { return pad_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  // End of generation: EOS, EOT, EOM and the end tokens llama.cpp recognizes by text.
  bool is_eog(int32_t id) const;
  const std::vector<int32_t>& eog_ids() const { return eog_ids_; }
  size_t vocab_size() const { return tokens_.size(); }
  TokenizerModel model() const { return model_; }
  PreTokenizerKind pre_tokenizer() const { return pre_.kind; }
  const std::string& token_text(int32_t id) const;  // the vocabulary's text, unprocessed
  TokenType token_type(int32_t id) const;           // after llama.cpp's control-token fix-ups
  int32_t find_token(std::string_view text) const;  // kNoToken when absent

 private:
  struct Fragment {
    int32_t token;  // kNoToken for raw text
    size_t offset;  // raw text: byte range of the input
    size_t length;
  };
  std::vector<Fragment> split_special(std::string_view text, bool parse_special) const;
  void encode_spm(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe(std::string_view text, std::vector<int32_t>& out) const;
  void encode_bpe_word(const std::string& word, std::vector<int32_t>& out) const;
  int32_t spm_byte_token(uint8_t byte) const;
  int merge_rank(std::string_view left, std::string_view right, std::string& scratch) const;
  void check_id(int32_t id) const;
  void finish_special_tokens(int32_t fim_pad, int32_t fim_rep, int32_t fim_sep);

  TokenizerModel model_;
  PreTokenizerSpec pre_{PreTokenizerKind::kDefault};
  std::vector<std::string> tokens_;
  std::vector<float> scores_;
  std::vector<uint16_t> attrs_;      // Attr bits per token (tokenizer.cpp)
  std::vector<std::string> pieces_;  // token_to_piece(id, true), precomputed
  // Transparent hashing so lookups take string_views without building strings.
  struct TextHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, TextHash, std::equal_to<>> token_to_id_;
  std::unordered_map<std::string, int, TextHash, std::equal_to<>> merge_ranks_;  // "left right"
  std::vector<int32_t> special_tokens_;   // matched in text before tokenizing, longest first
  std::vector<int32_t> eog_ids_;          // sorted
  std::vector<int32_t> spm_byte_tokens_;  // byte -> <0xXX> token (kNoToken if absent)
  int32_t bos_ = kNoToken, eos_ = kNoToken, eot_ = kNoToken, eom_ = kNoToken;
  int32_t unk_ = kNoToken, pad_ = kNoToken, sep_ = kNoToken;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
};

}  // namespace tessera::tokenizer
