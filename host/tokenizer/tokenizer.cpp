// Tokenizer construction, special-token handling, SPM and byte-level BPE encoding, decoding.
// Behaviour follows llama.cpp's llama-vocab.cpp (studied, not copied) so ids match it exactly.
#include "host/tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <queue>

#include "host/tokenizer/unicode.h"

namespace tessera::tokenizer {
namespace {

// Token attributes (llama.cpp's llama_token_attr subset).
enum Attr : uint16_t {
  kAttrUnknown = 1 << 0,
  kAttrUnused = 1 << 1,
  kAttrNormal = 1 << 2,
  kAttrControl = 1 << 3,
  kAttrUserDefined = 1 << 4,
  kAttrByte = 1 << 5,
  kAttrLstrip = 1 << 6,
  kAttrRstrip = 1 << 7,
};

uint16_t attr_of(TokenType t) {
  switch (t) {
    case TokenType::kNormal:
      return kAttrNormal;
    case TokenType::kUnknown:
      return kAttrUnknown;
    case TokenType::kControl:
      return kAttrControl;
    case TokenType::kUserDefined:
      return kAttrUserDefined;
    case TokenType::kUnused:
      return kAttrUnused;
    case TokenType::kByte:
      return kAttrByte;
    case TokenType::kUndefined:
      return 0;
  }
  return 0;
}

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// Parses "<0xXX>"; -1 if the text is not a byte token.
int parse_byte_token(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(text[3]);
  const int lo = hex(text[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

// GPT-2 alphabet text -> the bytes it stands for. A codepoint outside the alphabet (only in
// malformed vocabularies) is kept as its UTF-8 so nothing is silently dropped.
std::string gpt2_text_to_bytes(std::string_view text) {
  std::string out;
  for (const Utf8Char& ch : decode_utf8(text)) {
    const int b = gpt2_codepoint_to_byte(ch.cp);
    if (b >= 0 && ch.cp != 0xFFFD) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text.substr(ch.offset, ch.length));
    }
  }
  return out;
}

bool is_ascii_space(char c) {
  return std::isspace(static_cast<unsigned char>(c)) != 0;
}

// Texts llama.cpp treats as end-of-generation markers whatever the metadata says.
constexpr std::string_view kEogTexts[] = {"<|eot_id|>",
                                          "<|im_end|>",
                                          "<|end|>",
                                          "<|return|>",
                                          "<|call|>",
                                          "<|flush|>",
                                          "<|calls|>",
                                          "<end_of_turn>",
                                          "<|endoftext|>",
                                          "</s>",
                                          "<|eom_id|>",
                                          "<EOT>",
                                          "_<EOT>",
                                          "[EOT]",
                                          "[EOS]",
                                          "<|end_of_text|>",
                                          "<end_of_utterance>",
                                          "<eos>",
                                          "<turn|>",
                                          "<|tool_response>",
                                          "<\uFF5Cend\u2581of\u2581sentence\uFF5C>",  // DeepSeek
                                          "[e~["};

template <size_t N>
bool is_one_of(const std::string& s, const std::string_view (&list)[N]) {
  return std::find(std::begin(list), std::end(list), s) != std::end(list);
}

}  // namespace

Tokenizer::Tokenizer(Vocab v) : model_(v.model) {
  const size_t n = v.tokens.size();
  if (n == 0) throw TokenizerError("tokenizer.ggml.tokens: the vocabulary is empty");
  if (n > static_cast<size_t>(INT32_MAX))
    throw TokenizerError("tokenizer.ggml.tokens: too many tokens");
  if (!v.scores.empty() && v.scores.size() != n) {
    throw TokenizerError("tokenizer.ggml.scores: " + std::to_string(v.scores.size()) +
                         " scores for " + std::to_string(n) + " tokens");
  }
  if (!v.types.empty() && v.types.size() != n) {
    throw TokenizerError("tokenizer.ggml.token_type: " + std::to_string(v.types.size()) +
                         " types for " + std::to_string(n) + " tokens");
  }
  if (model_ == TokenizerModel::kBpe) {
    const std::string pre_name = v.pre.empty() ? "default" : v.pre;
    const auto spec = pre_tokenizer_from_name(pre_name);
    if (!spec) {
      throw TokenizerError("tokenizer.ggml.pre: unsupported pre-tokenizer '" + pre_name +
                           "'; supported: " + supported_pre_tokenizer_names());
    }
    pre_ = *spec;
  }

  tokens_ = std::move(v.tokens);
  scores_ = v.scores.empty() ? std::vector<float>(n, 0.0f) : std::move(v.scores);
  attrs_.resize(n, kAttrNormal);
  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (!v.types.empty()) attrs_[i] = attr_of(v.types[i]);
    if (tokens_[i].empty()) tokens_[i] = "[EMPTY_" + std::to_string(i) + "]";  // as llama.cpp does
    const auto [it, inserted] = token_to_id_.emplace(tokens_[i], static_cast<int32_t>(i));
    if (!inserted) {
      throw TokenizerError("tokenizer.ggml.tokens: token " + std::to_string(i) + " '" + tokens_[i] +
                           "' repeats token " + std::to_string(it->second));
    }
  }

  if (model_ == TokenizerModel::kBpe) {
    merge_ranks_.reserve(v.merges.size());
    for (size_t i = 0; i < v.merges.size(); ++i) {
      const std::string& m = v.merges[i];
      const size_t space = m.find(' ', 1);
      if (space == std::string::npos || space + 1 >= m.size() ||
          m.find(' ', space + 1) != std::string::npos) {
        throw TokenizerError("tokenizer.ggml.merges: entry " + std::to_string(i) + " '" + m +
                             "' is not two tokens separated by one space");
      }
      merge_ranks_.emplace(m, static_cast<int>(i));  // the first (highest-priority) entry wins
    }
  }

  auto check_special = [&](int32_t id, const char* key) {
    if (id != kNoToken && (id < 0 || static_cast<size_t>(id) >= n)) {
      throw TokenizerError(std::string("tokenizer.ggml.") + key + ": id " + std::to_string(id) +
                           " outside the vocabulary of " + std::to_string(n) + " tokens");
    }
    return id;
  };
  bos_ = check_special(v.bos_id, "bos_token_id");
  eos_ = check_special(v.eos_id, "eos_token_id");
  eot_ = check_special(v.eot_id, "eot_token_id");
  eom_ = check_special(v.eom_id, "eom_token_id");
  unk_ = check_special(v.unk_id, "unknown_token_id");
  pad_ = check_special(v.pad_id, "padding_token_id");
  sep_ = check_special(v.sep_id, "seperator_token_id");
  add_bos_ = v.add_bos;
  add_eos_ = v.add_eos;
  add_space_prefix_ = model_ == TokenizerModel::kSpm && v.add_space_prefix;
  if (add_bos_ && bos_ == kNoToken)
    throw TokenizerError("tokenizer.ggml.add_bos_token: set but no BOS id");
  if (add_eos_ && eos_ == kNoToken)
    throw TokenizerError("tokenizer.ggml.add_eos_token: set but no EOS id");

  finish_special_tokens(check_special(v.fim_pad_id, "fim_pad_token_id"),
                        check_special(v.fim_rep_id, "fim_rep_token_id"),
                        check_special(v.fim_sep_id, "fim_sep_token_id"));

  if (v.special_tokens_rstrip) {
    for (const int32_t id : special_tokens_) attrs_[id] |= kAttrRstrip;
    if (const int32_t id = find_token("</s>"); id != kNoToken) attrs_[id] |= kAttrRstrip;
    for (const char* t : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (const int32_t id = find_token(t); id != kNoToken) attrs_[id] &= ~kAttrRstrip;
    }
  }

  if (model_ == TokenizerModel::kSpm) {
    spm_byte_tokens_.assign(256, kNoToken);
    static const char* kHex = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      const std::string hex = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
      int32_t id = find_token(hex);
      if (id == kNoToken) id = find_token(std::string(1, static_cast<char>(b)));
      spm_byte_tokens_[b] = id;
    }
  }

  // Pieces as llama.cpp's token-to-piece cache holds them (special tokens rendered).
  pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint16_t a = attrs_[i];
    const std::string& text = tokens_[i];
    std::string& piece = pieces_[i];
    if (a & (kAttrUnknown | kAttrControl | kAttrUserDefined)) {
      piece = text;
    } else if (a & kAttrNormal) {
      piece = model_ == TokenizerModel::kSpm ? replace_all(text, kSpmSpace, " ")
                                             : gpt2_text_to_bytes(text);
    } else if (a & kAttrByte) {
      const int b = parse_byte_token(text);
      if (b < 0) {
        throw TokenizerError("tokenizer.ggml.token_type: token " + std::to_string(i) + " '" + text +
                             "' is typed BYTE but is not <0xXX>");
      }
      piece = std::string(1, static_cast<char>(b));
    }
    // Undefined and unused tokens render as nothing, as in llama.cpp.
  }
}

// Fills in what llama.cpp derives from token texts: EOT/EOM when metadata lacks them, the set of
// end-of-generation tokens (forced to control type), and the list of tokens matched in raw text.
void Tokenizer::finish_special_tokens(int32_t fim_pad, int32_t fim_rep, int32_t fim_sep) {
  // The first text of each list present in the vocabulary (list order, so "<|end|>" is preferred to
  // "<|endoftext|>" as Phi-3's end of turn), forced to control type.
  auto detect = [&](int32_t& id, std::initializer_list<std::string_view> texts) {
    if (id != kNoToken) return;
    for (const std::string_view t : texts) {
      id = find_token(t);
      if (id != kNoToken) {
        attrs_[id] |= kAttrControl;
        return;
      }
    }
  };
  detect(eot_, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                "<\uFF5Cend\u2581of\u2581sentence\uFF5C>", "<end_of_utterance>"});
  detect(eom_, {"<|eom_id|>"});
  detect(fim_pad, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"});
  detect(fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"});
  detect(fim_sep, {"<|file_sep|>"});

  const int32_t n = static_cast<int32_t>(tokens_.size());
  std::vector<int32_t> eog;
  for (int32_t id = 0; id < n; ++id) {
    if (is_one_of(tokens_[id], kEogTexts)) {
      eog.push_back(id);
      attrs_[id] |= kAttrControl;
    }
  }
  for (const int32_t id : {eos_, eot_, eom_, fim_pad, fim_rep, fim_sep}) {
    if (id != kNoToken) eog.push_back(id);
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  // gpt-oss / solar-open: "<|end|>" ends a message, not the generation, when these are present.
  auto has = [&](const char* t) {
    const int32_t id = find_token(t);
    return id != kNoToken && std::binary_search(eog.begin(), eog.end(), id);
  };
  if (has("<|end|>") &&
      ((has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")))) {
    const int32_t end_id = find_token("<|end|>");
    eog.erase(std::find(eog.begin(), eog.end(), end_id));
    attrs_[end_id] = kAttrUserDefined;
  }
  eog_ids_ = std::move(eog);

  for (int32_t id = 0; id < n; ++id) {
    if (attrs_[id] & (kAttrControl | kAttrUserDefined | kAttrUnknown))
      special_tokens_.push_back(id);
  }
  // Longest first so a token is never split by a shorter one it contains; ties by id for
  // determinism.
  std::stable_sort(special_tokens_.begin(), special_tokens_.end(),
                   [&](int32_t a, int32_t b) { return tokens_[a].size() > tokens_[b].size(); });
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= tokens_.size()) {
    throw TokenizerError("token id " + std::to_string(id) + " outside the vocabulary of " +
                         std::to_string(tokens_.size()) + " tokens");
  }
}

const std::string& Tokenizer::token_text(int32_t id) const {
  check_id(id);
  return tokens_[id];
}

TokenType Tokenizer::token_type(int32_t id) const {
  check_id(id);
  const uint16_t a = attrs_[id];
  if (a & kAttrControl) return TokenType::kControl;
  if (a & kAttrUserDefined) return TokenType::kUserDefined;
  if (a & kAttrUnknown) return TokenType::kUnknown;
  if (a & kAttrByte) return TokenType::kByte;
  if (a & kAttrUnused) return TokenType::kUnused;
  if (a & kAttrNormal) return TokenType::kNormal;
  return TokenType::kUndefined;
}

int32_t Tokenizer::find_token(std::string_view text) const {
  const auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? kNoToken : it->second;
}

bool Tokenizer::is_eog(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

// Splits text at every occurrence of a special token, longest tokens first (llama.cpp's
// tokenizer_st_partition). Without parse_special only user-defined tokens are matched.
std::vector<Tokenizer::Fragment> Tokenizer::split_special(std::string_view text,
                                                          bool parse_special) const {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  frags.push_back({kNoToken, 0, text.size()});
  std::vector<Fragment> next;
  for (const int32_t id : special_tokens_) {
    const uint16_t a = attrs_[id];
    if (!parse_special && (a & (kAttrControl | kAttrUnknown))) continue;
    const std::string& tok = tokens_[id];
    next.clear();
    bool changed = false;
    for (const Fragment& f : frags) {
      if (f.token != kNoToken) {
        next.push_back(f);
        continue;
      }
      size_t begin = f.offset;
      const size_t end = f.offset + f.length;
      while (begin < end) {
        const size_t hit = text.substr(0, end).find(tok, begin);
        if (hit == std::string_view::npos) break;
        changed = true;
        size_t left_end = hit;
        if (a & kAttrLstrip) {
          while (left_end > begin && is_ascii_space(text[left_end - 1])) --left_end;
        }
        if (left_end > begin) next.push_back({kNoToken, begin, left_end - begin});
        next.push_back({id, 0, 0});
        begin = hit + tok.size();
        if (a & kAttrRstrip) {
          while (begin < end && is_ascii_space(text[begin])) ++begin;
        }
      }
      if (begin < end) next.push_back({kNoToken, begin, end - begin});
    }
    if (changed) frags.swap(next);
  }
  return frags;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  const std::vector<Fragment> frags = split_special(text, parse_special);
  if (add_special && add_bos_) out.push_back(bos_);
  if (model_ == TokenizerModel::kSpm) {
    bool prev_special = true;  // the text start counts as "after a special token"
    for (const Fragment& f : frags) {
      if (f.token != kNoToken) {
        out.push_back(f.token);
        prev_special = true;
        continue;
      }
      std::string piece;
      if (add_space_prefix_ && prev_special) piece = " ";
      piece.append(text.substr(f.offset, f.length));
      encode_spm(replace_all(piece, " ", kSpmSpace), out);
      prev_special = false;
    }
  } else {
    for (const Fragment& f : frags) {
      if (f.token != kNoToken) {
        out.push_back(f.token);
      } else {
        encode_bpe(text.substr(f.offset, f.length), out);
      }
    }
  }
  if (add_special && add_eos_) out.push_back(eos_);
  return out;
}

int32_t Tokenizer::spm_byte_token(uint8_t byte) const {
  const int32_t id = spm_byte_tokens_[byte];
  if (id != kNoToken) return id;
  if (unk_ != kNoToken) return unk_;
  throw TokenizerError("tokenizer.ggml.tokens: no byte-fallback token <0x" +
                       std::string(1, "0123456789ABCDEF"[byte >> 4]) +
                       std::string(1, "0123456789ABCDEF"[byte & 15]) + "> and no unknown token");
}

namespace {

// A piece of the text being merged: symbols form a doubly linked list over the text.
struct Symbol {
  int prev;
  int next;
  size_t offset;
  size_t length;  // 0 once merged into its left neighbour
};

struct SpmBigram {
  int left;
  int right;
  float score;
  size_t length;
};
struct SpmBigramOrder {
  // Highest score first; among equal scores the leftmost pair.
  bool operator()(const SpmBigram& a, const SpmBigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

struct BpeBigram {
  int left;
  int right;
  int rank;
  size_t left_length;
  size_t right_length;
};
struct BpeBigramOrder {
  // Lowest rank first; among equal ranks the leftmost pair.
  bool operator()(const BpeBigram& a, const BpeBigram& b) const {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  }
};

std::vector<Symbol> split_symbols(std::string_view text) {
  std::vector<Symbol> symbols;
  size_t offset = 0;
  while (offset < text.size()) {
    const size_t len =
        std::min(utf8_sequence_length(static_cast<uint8_t>(text[offset])), text.size() - offset);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, offset + len == text.size() ? -1 : index + 1, offset, len});
    offset += len;
  }
  return symbols;
}

}  // namespace

// SentencePiece-style: start from characters, repeatedly merge the adjacent pair whose union is the
// highest-scoring token; characters that are not tokens fall back to <0xXX> byte tokens.
void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<Symbol> symbols = split_symbols(text);
  std::priority_queue<SpmBigram, std::vector<SpmBigram>, SpmBigramOrder> queue;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t len = symbols[left].length + symbols[right].length;
    const auto it = token_to_id_.find(text.substr(symbols[left].offset, len));
    if (it == token_to_id_.end()) return;
    queue.push({left, right, scores_[it->second], len});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const SpmBigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[b.left];
    Symbol& r = symbols[b.right];
    if (l.length == 0 || r.length == 0 || l.length + r.length != b.length) continue;  // stale
    l.length += r.length;
    r.length = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    const std::string_view piece = text.substr(s.offset, s.length);
    const auto it = token_to_id_.find(piece);
    if (it != token_to_id_.end()) {
      out.push_back(it->second);
      continue;
    }
    for (const char c : piece) out.push_back(spm_byte_token(static_cast<uint8_t>(c)));
  }
}

int Tokenizer::merge_rank(std::string_view left, std::string_view right,
                          std::string& scratch) const {
  scratch.assign(left);
  scratch.push_back(' ');
  scratch.append(right);
  const auto it = merge_ranks_.find(scratch);
  return it == merge_ranks_.end() ? -1 : it->second;
}

// Byte-level BPE: pre-tokenize, map bytes to GPT-2's alphabet, merge by rank within each word.
void Tokenizer::encode_bpe(std::string_view text, std::vector<int32_t>& out) const {
  std::string word;
  for (const std::string_view raw : pre_tokenize(pre_.kind, text)) {
    word.clear();
    for (const char c : raw) append_utf8(word, byte_to_gpt2_codepoint(static_cast<uint8_t>(c)));
    encode_bpe_word(word, out);
  }
}

void Tokenizer::encode_bpe_word(const std::string& word, std::vector<int32_t>& out) const {
  if (pre_.ignore_merges) {
    const auto it = token_to_id_.find(word);
    if (it != token_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> symbols = split_symbols(word);
  std::priority_queue<BpeBigram, std::vector<BpeBigram>, BpeBigramOrder> queue;
  std::string scratch;
  const std::string_view w(word);
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    const int rank =
        merge_rank(w.substr(l.offset, l.length), w.substr(r.offset, r.length), scratch);
    if (rank >= 0) queue.push({left, right, rank, l.length, r.length});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const BpeBigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[b.left];
    Symbol& r = symbols[b.right];
    // Stale when either side changed since the pair was queued.
    if (l.length == 0 || r.length == 0 || l.length != b.left_length || r.length != b.right_length ||
        l.next != b.right) {
      continue;
    }
    l.length += r.length;
    r.length = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    const Symbol& s = symbols[i];
    const std::string_view piece = w.substr(s.offset, s.length);
    const auto it = token_to_id_.find(piece);
    if (it != token_to_id_.end()) {
      out.push_back(it->second);
      continue;
    }
    // Not a token: llama.cpp looks each byte of the text up as a one-byte token and drops misses.
    for (const char c : piece) {
      const auto byte_it = token_to_id_.find(std::string_view(&c, 1));
      if (byte_it != token_to_id_.end()) out.push_back(byte_it->second);
    }
  }
}

std::string Tokenizer::token_to_piece(int32_t id, bool render_special) const {
  check_id(id);
  if (!render_special && (attrs_[id] & (kAttrControl | kAttrUnknown))) return {};
  return pieces_[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  bool strip_space = add_space_prefix_;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    check_id(id);
    if (i == 0 && id == bos_ && bos_ != kNoToken && !render_special) continue;  // keep strip_space
    const uint16_t a = attrs_[id];
    if (!render_special && (a & (kAttrControl | kAttrUnknown))) {
      strip_space = false;
      continue;
    }
    const std::string& piece = pieces_[id];
    if (strip_space && !piece.empty() && piece[0] == ' ') {
      out.append(piece, 1, std::string::npos);
    } else {
      out.append(piece);
    }
    strip_space = false;
  }
  return out;
}

}  // namespace tessera::tokenizer
