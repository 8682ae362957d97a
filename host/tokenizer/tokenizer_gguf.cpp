// Tokenizer::from_gguf: reads the tokenizer.ggml.* metadata into a Vocab with llama.cpp's defaults
// (llama_vocab::impl::load) and builds the Tokenizer.
#include <algorithm>
#include <cctype>

#include "host/gguf/gguf.h"
#include "host/tokenizer/tokenizer.h"

namespace tessera::tokenizer {
namespace {

constexpr std::string_view kSupportedModels = "llama (SentencePiece-style), gpt2 (byte-level BPE)";

[[noreturn]] void fail(const gguf::GgufFile& file, const std::string& key,
                       const std::string& problem) {
  throw TokenizerError(file.path() + ": " + key + ": " + problem);
}

const std::vector<gguf::Value>* find_array(const gguf::GgufFile& file, const std::string& key) {
  const gguf::Value* v = file.find(key);
  return v ? &v->as_array() : nullptr;
}

// A special-token id from metadata, or `fallback` when absent. As in llama.cpp, an id outside the
// vocabulary is ignored in favour of the default (some converted files carry stale ids).
int32_t special_id(const gguf::GgufFile& file, const std::string& key, int32_t fallback, size_t n) {
  if (fallback != kNoToken && static_cast<size_t>(fallback) >= n) fallback = kNoToken;
  const gguf::Value* v = file.find(key);
  if (!v) return fallback;
  const int64_t id = v->as_int();
  if (id < 0 || static_cast<uint64_t>(id) >= n) return fallback;
  return static_cast<int32_t>(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const gguf::GgufFile& file) {
  Vocab v;
  const std::string& model = file.get_string("tokenizer.ggml.model");
  if (model == "llama") {
    v.model = TokenizerModel::kSpm;
  } else if (model == "gpt2") {
    v.model = TokenizerModel::kBpe;
  } else {
    fail(
        file, "tokenizer.ggml.model",
        "unsupported tokenizer model '" + model + "'; supported: " + std::string(kSupportedModels));
  }

  PreTokenizerSpec pre{PreTokenizerKind::kDefault};
  if (v.model == TokenizerModel::kBpe) {
    v.pre = file.get_string_or("tokenizer.ggml.pre", "default");
    if (v.pre.empty()) v.pre = "default";
    const auto spec = pre_tokenizer_from_name(v.pre);
    if (!spec) {
      fail(file, "tokenizer.ggml.pre",
           "unsupported pre-tokenizer '" + v.pre +
               "'; supported: " + supported_pre_tokenizer_names());
    }
    pre = *spec;
  }

  const auto& tokens = file.get_array("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  if (n == 0) fail(file, "tokenizer.ggml.tokens", "empty vocabulary");
  v.tokens.reserve(n);
  for (const auto& t : tokens) v.tokens.push_back(t.as_string());

  // llama.cpp accepts longer score/type arrays and reads the first n entries.
  if (const auto* scores = find_array(file, "tokenizer.ggml.scores")) {
    if (scores->size() < n) {
      fail(file, "tokenizer.ggml.scores",
           std::to_string(scores->size()) + " scores for " + std::to_string(n) + " tokens");
    }
    v.scores.reserve(n);
    for (size_t i = 0; i < n; ++i) v.scores.push_back(static_cast<float>((*scores)[i].as_float()));
  }
  if (const auto* types = find_array(file, "tokenizer.ggml.token_type")) {
    if (types->size() < n) {
      fail(file, "tokenizer.ggml.token_type",
           std::to_string(types->size()) + " types for " + std::to_string(n) + " tokens");
    }
    v.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t t = (*types)[i].as_int();
      // Unknown values behave as undefined tokens, as in llama.cpp.
      v.types.push_back(t >= 0 && t <= 6 ? static_cast<TokenType>(t) : TokenType::kUndefined);
    }
  }
  if (v.model == TokenizerModel::kBpe) {
    const auto* merges = find_array(file, "tokenizer.ggml.merges");
    if (!merges) fail(file, "tokenizer.ggml.merges", "missing (byte-level BPE needs its merges)");
    v.merges.reserve(merges->size());
    for (const auto& m : *merges) v.merges.push_back(m.as_string());
  }

  // Defaults per model, as llama.cpp sets them before reading the metadata.
  int32_t bos = kNoToken, eos = kNoToken, unk = kNoToken;
  if (v.model == TokenizerModel::kSpm) {
    bos = 1;
    eos = 2;
    unk = 0;
    v.add_bos = true;
    v.add_space_prefix = true;
  } else {
    bos = 11;  // llama.cpp's (odd) BPE defaults, overridden by every real file
    eos = 11;
    v.add_bos = pre.add_bos;
  }
  v.bos_id = special_id(file, "tokenizer.ggml.bos_token_id", bos, n);
  v.eos_id = special_id(file, "tokenizer.ggml.eos_token_id", eos, n);
  v.unk_id = special_id(file, "tokenizer.ggml.unknown_token_id", unk, n);
  v.eot_id = special_id(file, "tokenizer.ggml.eot_token_id", kNoToken, n);
  v.eom_id = special_id(file, "tokenizer.ggml.eom_token_id", kNoToken, n);
  v.sep_id = special_id(file, "tokenizer.ggml.seperator_token_id", kNoToken, n);
  v.pad_id = special_id(file, "tokenizer.ggml.padding_token_id", kNoToken, n);
  v.fim_pad_id = special_id(file, "tokenizer.ggml.fim_pad_token_id", kNoToken, n);
  v.fim_rep_id = special_id(file, "tokenizer.ggml.fim_rep_token_id", kNoToken, n);
  v.fim_sep_id = special_id(file, "tokenizer.ggml.fim_sep_token_id", kNoToken, n);
  v.add_bos = file.get_bool_or("tokenizer.ggml.add_bos_token", v.add_bos);
  v.add_eos = file.get_bool_or("tokenizer.ggml.add_eos_token", v.add_eos);
  v.add_space_prefix = file.get_bool_or("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  if (v.add_bos && v.bos_id == kNoToken) {
    fail(file, "tokenizer.ggml.add_bos_token", "set, but the vocabulary has no BOS token");
  }
  if (v.add_eos && v.eos_id == kNoToken) {
    fail(file, "tokenizer.ggml.add_eos_token", "set, but the vocabulary has no EOS token");
  }

  // llama.cpp keys Phi-3's special-token whitespace rule on the model name.
  std::string name = file.get_string_or("general.name", "");
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  v.special_tokens_rstrip =
      name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos;

  try {
    return Tokenizer(std::move(v));
  } catch (const TokenizerError& e) {
    throw TokenizerError(file.path() + ": " + e.what());
  }
}

}  // namespace tessera::tokenizer
