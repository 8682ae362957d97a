// Pre-tokenizers of byte-level BPE vocabularies: the regex splits llama.cpp applies before BPE,
// written as hand-made scanners over codepoints (no std::regex), one per `tokenizer.ggml.pre`
// family.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::tokenizer {

// Families of split rules; several `tokenizer.ggml.pre` names share one (see
// pre_tokenizer_from_name).
enum class PreTokenizerKind {
  kDefault,        // "default": punctuation runs, GPT-2 rule, digit runs, ASCII digit triples
  kGpt2,           // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,         // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
                   // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,          // as kLlama3 but single digits: \p{N}
  kDeepseekCoder,  // [\r\n], \s?\p{L}+, \s?\p{P}+, CJK/Hangul runs, \p{N} applied one after another
  kStarcoder,      // \p{N} then the GPT-2 rule
  kGpt4o,          // o200k (gpt-oss, GPT-4o), as llama.cpp's rewrite of it: words split by ASCII
                   // case ([^\r\n\p{L}\p{N}]?U*L+C?|[^\r\n\p{L}\p{N}]?U+L*C?, U a letter other
                   // than a-z, L a letter other than A-Z, C a contraction), \p{N}{1,3}, then as
                   // kLlama3
};

// What a `tokenizer.ggml.pre` name selects, with the flags llama.cpp ties to that name.
struct PreTokenizerSpec {
  PreTokenizerKind kind;
  bool ignore_merges = false;  // a word that is itself a token is emitted whole (Llama 3)
  bool add_bos = false;        // default of add_bos_token for this family (Llama 3: true)
};

// Looks a `tokenizer.ggml.pre` value up; nullopt when unsupported.
std::optional<PreTokenizerSpec> pre_tokenizer_from_name(std::string_view name);
// Comma-separated list of the accepted names, for error messages.
std::string supported_pre_tokenizer_names();
std::string_view pre_tokenizer_kind_name(PreTokenizerKind kind);

// Splits text into words (slices of text, in order, covering it exactly). Thread-safe.
std::vector<std::string_view> pre_tokenize(PreTokenizerKind kind, std::string_view text);

}  // namespace tessera::tokenizer
