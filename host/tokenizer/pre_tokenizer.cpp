// Hand-written scanners for the BPE pre-tokenizer regexes. Each stage refines the list of fragments
// the previous stage produced, as llama.cpp applies its regex list one after the other: a stage
// keeps both its matches and the unmatched text between them as separate fragments.
#include "host/tokenizer/pre_tokenizer.h"

#include <array>
#include <cstring>

#include "host/tokenizer/unicode.h"

namespace tessera::tokenizer {
namespace {

constexpr uint32_t kOutOfRange = 0xFFFFFFFF;

// A fragment being scanned: codepoints [begin, end) of the text.
class Cursor {
 public:
  Cursor(const std::vector<Utf8Char>& chars, size_t begin, size_t end)
      : chars_(chars), begin_(begin), end_(end) {}
  uint32_t cp(size_t pos) const { return inside(pos) ? chars_[pos].cp : kOutOfRange; }
  // Flags of the codepoint at pos; 0 outside the fragment, so every class test fails there.
  uint16_t flags(size_t pos) const { return inside(pos) ? codepoint_flags(chars_[pos].cp) : 0; }
  size_t begin() const { return begin_; }
  size_t end() const { return end_; }

 private:
  bool inside(size_t pos) const { return pos >= begin_ && pos < end_; }
  const std::vector<Utf8Char>& chars_;
  size_t begin_;
  size_t end_;
};

// Collects fragment lengths; empty pieces are dropped.
class Emitter {
 public:
  Emitter(std::vector<size_t>& out, size_t start) : out_(out), prev_end_(start) {}
  // Ends the current piece at `end`; returns its length.
  size_t cut(size_t end) {
    const size_t len = end - prev_end_;
    if (len > 0) out_.push_back(len);
    prev_end_ = end;
    return len;
  }

 private:
  std::vector<size_t>& out_;
  size_t prev_end_;
};

bool is_letter(uint16_t f) {
  return (f & kCpLetter) != 0;
}
bool is_number(uint16_t f) {
  return (f & kCpNumber) != 0;
}
bool is_space(uint16_t f) {
  return (f & kCpWhitespace) != 0;
}
// [^\s\p{L}\p{N}] inside the fragment.
bool is_other(uint16_t f) {
  return f != 0 && !(f & (kCpWhitespace | kCpLetter | kCpNumber));
}

uint32_t ascii_lower(uint32_t cp) {
  return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
}

// Length of a contraction ('s 't 're 've 'm 'll 'd) at pos, 0 if none.
size_t contraction_length(const Cursor& c, size_t pos, bool case_insensitive) {
  if (c.cp(pos) != '\'' || pos + 1 >= c.end()) return 0;
  auto norm = [&](uint32_t cp) { return case_insensitive ? ascii_lower(cp) : cp; };
  const uint32_t a = norm(c.cp(pos + 1));
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= c.end()) return 0;
  const uint32_t b = norm(c.cp(pos + 2));
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void split_gpt2(const Cursor& c, std::vector<size_t>& out) {
  Emitter emit(out, c.begin());
  size_t pos = c.begin();
  while (pos < c.end()) {
    const uint32_t cp = c.cp(pos);
    if (const size_t n = contraction_length(c, pos, false)) {
      pos += emit.cut(pos + n);
      continue;
    }
    const uint16_t f2 = cp == ' ' ? c.flags(pos + 1) : c.flags(pos);
    if (is_letter(f2) || is_number(f2) || is_other(f2)) {
      // The optional leading space, then a run of the class the next codepoint has.
      auto same = is_letter(f2) ? is_letter : is_number(f2) ? is_number : is_other;
      pos += (cp == ' ');
      while (same(c.flags(pos))) ++pos;
      emit.cut(pos);
      continue;
    }
    size_t spaces = 0;
    while (is_space(c.flags(pos + spaces))) ++spaces;
    if (spaces > 1 && c.cp(pos + spaces) != kOutOfRange) {
      // \s+(?!\S): leave the last space to prefix the word that follows.
      pos += spaces - 1;
      emit.cut(pos);
      continue;
    }
    if (spaces > 0) {
      pos += spaces;
      emit.cut(pos);
      continue;
    }
    emit.cut(++pos);
  }
}

// o200k's case classes as llama.cpp's rewrite of the regex has them ((?=[\p{L}])([^a-z]) and
// (?=[\p{L}])([^A-Z])): "upper" is a letter other than a-z, "lower" a letter other than A-Z, so a
// letter outside ASCII is both. (tokenizer.json's original uses \p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M} and
// \p{Ll}\p{Lm}\p{Lo}\p{M}; llama.cpp matches the rewrite, and so does Tessera.)
bool is_upper_like(const Cursor& c, size_t p) {
  const uint32_t cp = c.cp(p);
  return is_letter(c.flags(p)) && !(cp >= 'a' && cp <= 'z');
}
bool is_lower_like(const Cursor& c, size_t p) {
  const uint32_t cp = c.cp(p);
  return is_letter(c.flags(p)) && !(cp >= 'A' && cp <= 'Z');
}

// End of U*L+ at p (a letter), as a backtracking regex engine finds it: U* takes the longest run
// that still leaves an L after it; failing that, U+L* (the run of U alone, L* empty there).
size_t case_word_end(const Cursor& c, size_t p) {
  size_t u_end = p;
  while (is_upper_like(c, u_end)) ++u_end;
  for (size_t k = u_end;; --k) {
    if (is_lower_like(c, k)) {
      while (is_lower_like(c, k)) ++k;
      return k;
    }
    if (k == p) break;
  }
  return u_end;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
// ?[^\s\p{L}\p{N}]+[\r\n]*
// |\s*[\r\n]+|\s+(?!\S)|\s+        (Llama 3: max_digits 3; Qwen2: 1)
// case_words (o200k): no leading contraction alternative; the letters are
// [^\r\n\p{L}\p{N}]?(U*L+|U+L*) followed by an optional contraction (case_word_end), and the
// punctuation rule's tail is [\r\n/]* ('/' is punctuation already, so nothing changes there).
void split_llama3(const Cursor& c, size_t max_digits, std::vector<size_t>& out,
                  bool case_words = false) {
  Emitter emit(out, c.begin());
  size_t pos = c.begin();
  while (pos < c.end()) {
    const uint32_t cp = c.cp(pos);
    const uint16_t flags = c.flags(pos);
    if (!case_words) {
      if (const size_t n = contraction_length(c, pos, true)) {
        pos += emit.cut(pos + n);
        continue;
      }
    }
    if (!(cp == '\r' || cp == '\n' || is_number(flags)) &&
        (is_letter(flags) || is_letter(c.flags(pos + 1)))) {
      if (case_words) {
        pos = case_word_end(c, is_letter(flags) ? pos : pos + 1);
        pos += contraction_length(c, pos, true);
        emit.cut(pos);
        continue;
      }
      ++pos;  // a letter, or the one non-letter allowed in front of the letters
      while (is_letter(c.flags(pos))) ++pos;
      emit.cut(pos);
      continue;
    }
    if (is_number(flags)) {
      size_t run_start = pos;
      while (is_number(c.flags(pos))) {
        if (++pos - run_start >= max_digits) {
          emit.cut(pos);
          run_start = pos;
        }
      }
      emit.cut(pos);
      continue;
    }
    uint16_t f2 = cp == ' ' ? c.flags(pos + 1) : flags;
    if (is_other(f2) && flags != 0) {
      pos += (cp == ' ');
      while (is_other(c.flags(pos))) ++pos;
      while (c.cp(pos) == '\r' || c.cp(pos) == '\n') ++pos;
      emit.cut(pos);
      continue;
    }
    size_t spaces = 0;
    size_t after_last_newline = 0;
    while (is_space(c.flags(pos + spaces))) {
      const uint32_t s = c.cp(pos + spaces);
      if (s == '\r' || s == '\n') after_last_newline = pos + spaces + 1;
      ++spaces;
    }
    if (after_last_newline > 0) {  // \s*[\r\n]+
      pos = after_last_newline;
      emit.cut(pos);
      continue;
    }
    if (spaces > 1 && c.cp(pos + spaces) != kOutOfRange) {
      pos += spaces - 1;
      emit.cut(pos);
      continue;
    }
    if (spaces > 0) {
      pos += spaces;
      emit.cut(pos);
      continue;
    }
    emit.cut(++pos);
  }
}

// A regex without alternatives that need backtracking, reduced to "length of the match starting at
// pos, 0 if none". split_matches then behaves like iterating std::regex matches: leftmost match,
// the text between matches kept as its own fragment.
using Matcher = size_t (*)(const Cursor& c, size_t pos);

void split_matches(const Cursor& c, Matcher match, std::vector<size_t>& out) {
  size_t gap_start = c.begin();
  size_t pos = c.begin();
  while (pos < c.end()) {
    const size_t n = match(c, pos);
    if (n == 0) {
      ++pos;
      continue;
    }
    if (pos > gap_start) out.push_back(pos - gap_start);
    out.push_back(n);
    pos += n;
    gap_start = pos;
  }
  if (c.end() > gap_start) out.push_back(c.end() - gap_start);
}

size_t run_length(const Cursor& c, size_t pos, bool (*pred)(const Cursor&, size_t)) {
  size_t n = 0;
  while (pos + n < c.end() && pred(c, pos + n)) ++n;
  return n;
}

bool is_number_at(const Cursor& c, size_t pos) {
  return is_number(c.flags(pos));
}
bool is_letter_at(const Cursor& c, size_t pos) {
  return is_letter(c.flags(pos));
}
bool is_punct_at(const Cursor& c, size_t pos) {
  return (c.flags(pos) & kCpPunctuation) != 0;
}

// [\p{P}\$\+<=>\^~\|]+
size_t match_default_punct(const Cursor& c, size_t pos) {
  return run_length(c, pos, [](const Cursor& c, size_t p) {
    const uint32_t cp = c.cp(p);
    return is_punct_at(c, p) ||
           (cp < 128 && cp != 0 && std::strchr("$+<=>^~|", static_cast<int>(cp)));
  });
}
// \p{N}+
size_t match_number_run(const Cursor& c, size_t pos) {
  return run_length(c, pos, is_number_at);
}
// \p{N}
size_t match_one_number(const Cursor& c, size_t pos) {
  return is_number(c.flags(pos)) ? 1 : 0;
}
// [0-9][0-9][0-9]
size_t match_ascii_digit_triple(const Cursor& c, size_t pos) {
  for (size_t k = 0; k < 3; ++k) {
    const uint32_t cp = c.cp(pos + k);
    if (cp < '0' || cp > '9') return 0;
  }
  return 3;
}
// [\r\n]
size_t match_newline(const Cursor& c, size_t pos) {
  const uint32_t cp = c.cp(pos);
  return (cp == '\r' || cp == '\n') ? 1 : 0;
}
// \s?X+ for a class X.
size_t match_optional_space_then_run(const Cursor& c, size_t pos,
                                     bool (*pred)(const Cursor&, size_t)) {
  if (is_space(c.flags(pos))) {
    const size_t n = run_length(c, pos + 1, pred);
    if (n > 0) return n + 1;
  }
  return run_length(c, pos, pred);
}
size_t match_space_letters(const Cursor& c, size_t pos) {
  return match_optional_space_then_run(c, pos, is_letter_at);
}
size_t match_space_punct(const Cursor& c, size_t pos) {
  return match_optional_space_then_run(c, pos, is_punct_at);
}
// [一-龥ࠀ-一가-퟿]+ : U+4E00..U+9FA5, U+0800..U+4E00, U+AC00..U+D7FF. llama.cpp matches this
// on text whose non-ASCII white space was replaced by U+000B, so U+3000 (ideographic space) is
// excluded.
size_t match_cjk_run(const Cursor& c, size_t pos) {
  return run_length(c, pos, [](const Cursor& c, size_t p) {
    const uint32_t cp = c.cp(p);
    const bool in_range = (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x0800 && cp <= 0x4E00) ||
                          (cp >= 0xAC00 && cp <= 0xD7FF);
    return in_range && !is_space(c.flags(p));
  });
}

struct NamedSpec {
  std::string_view name;
  PreTokenizerSpec spec;
};

// `tokenizer.ggml.pre` names and the family each selects, as llama.cpp's vocabulary loader maps
// them. Names whose models need behaviour beyond these families are deliberately left out.
constexpr std::array kNames = {
    NamedSpec{"default", {PreTokenizerKind::kDefault}},
    NamedSpec{"gpt-2", {PreTokenizerKind::kGpt2}},
    NamedSpec{"phi-2", {PreTokenizerKind::kGpt2}},
    NamedSpec{"mpt", {PreTokenizerKind::kGpt2}},
    NamedSpec{"olmo", {PreTokenizerKind::kGpt2}},
    NamedSpec{"jais", {PreTokenizerKind::kGpt2}},
    NamedSpec{"exaone4", {PreTokenizerKind::kGpt2}},
    NamedSpec{"llama3", {PreTokenizerKind::kLlama3, true, true}},
    NamedSpec{"llama-v3", {PreTokenizerKind::kLlama3, true, true}},
    NamedSpec{"llama-bpe", {PreTokenizerKind::kLlama3, true, true}},
    NamedSpec{"falcon3", {PreTokenizerKind::kLlama3, true, true}},
    NamedSpec{"pixtral", {PreTokenizerKind::kLlama3, true, true}},
    NamedSpec{"dbrx", {PreTokenizerKind::kLlama3}},
    NamedSpec{"smaug-bpe", {PreTokenizerKind::kLlama3}},
    NamedSpec{"qwen2", {PreTokenizerKind::kQwen2}},
    NamedSpec{"deepseek-r1-qwen", {PreTokenizerKind::kQwen2}},
    NamedSpec{"megrez", {PreTokenizerKind::kQwen2}},
    NamedSpec{"stablelm2", {PreTokenizerKind::kQwen2}},
    NamedSpec{"hunyuan", {PreTokenizerKind::kQwen2}},
    NamedSpec{"deepseek-coder", {PreTokenizerKind::kDeepseekCoder}},
    NamedSpec{"starcoder", {PreTokenizerKind::kStarcoder}},
    NamedSpec{"refact", {PreTokenizerKind::kStarcoder}},
    NamedSpec{"command-r", {PreTokenizerKind::kStarcoder}},
    NamedSpec{"smollm", {PreTokenizerKind::kStarcoder}},
    NamedSpec{"codeshell", {PreTokenizerKind::kStarcoder}},
    NamedSpec{"exaone", {PreTokenizerKind::kStarcoder}},
    NamedSpec{"minerva-7b", {PreTokenizerKind::kStarcoder}},
    NamedSpec{"gpt-4o", {PreTokenizerKind::kGpt4o}},
};

// One stage of a pre-tokenizer: refines one fragment.
enum class Stage { kGpt2, kLlama3, kQwen2, kGpt4o, kMatch };
struct StageSpec {
  Stage stage;
  Matcher matcher = nullptr;
};

std::vector<StageSpec> stages_of(PreTokenizerKind kind) {
  switch (kind) {
    case PreTokenizerKind::kDefault:
      return {{Stage::kMatch, match_default_punct},
              {Stage::kGpt2},
              {Stage::kMatch, match_number_run},
              {Stage::kMatch, match_ascii_digit_triple}};
    case PreTokenizerKind::kGpt2:
      return {{Stage::kGpt2}};
    case PreTokenizerKind::kLlama3:
      return {{Stage::kLlama3}};
    case PreTokenizerKind::kQwen2:
      return {{Stage::kQwen2}};
    case PreTokenizerKind::kDeepseekCoder:
      return {{Stage::kMatch, match_newline},
              {Stage::kMatch, match_space_letters},
              {Stage::kMatch, match_space_punct},
              {Stage::kMatch, match_cjk_run},
              {Stage::kMatch, match_one_number}};
    case PreTokenizerKind::kStarcoder:
      return {{Stage::kMatch, match_one_number}, {Stage::kGpt2}};
    case PreTokenizerKind::kGpt4o:
      return {{Stage::kGpt4o}};
  }
  return {};
}

}  // namespace

std::optional<PreTokenizerSpec> pre_tokenizer_from_name(std::string_view name) {
  for (const auto& n : kNames) {
    if (n.name == name) return n.spec;
  }
  return std::nullopt;
}

std::string supported_pre_tokenizer_names() {
  std::string s;
  for (const auto& n : kNames) {
    if (!s.empty()) s += ", ";
    s += n.name;
  }
  return s;
}

std::string_view pre_tokenizer_kind_name(PreTokenizerKind kind) {
  switch (kind) {
    case PreTokenizerKind::kDefault:
      return "default";
    case PreTokenizerKind::kGpt2:
      return "gpt2";
    case PreTokenizerKind::kLlama3:
      return "llama3";
    case PreTokenizerKind::kQwen2:
      return "qwen2";
    case PreTokenizerKind::kDeepseekCoder:
      return "deepseek-coder";
    case PreTokenizerKind::kStarcoder:
      return "starcoder";
    case PreTokenizerKind::kGpt4o:
      return "gpt-4o";
  }
  return "unknown";
}

std::vector<std::string_view> pre_tokenize(PreTokenizerKind kind, std::string_view text) {
  const std::vector<Utf8Char> chars = decode_utf8(text);
  std::vector<size_t> fragments;
  if (!chars.empty()) fragments.push_back(chars.size());
  std::vector<size_t> next;
  for (const StageSpec& st : stages_of(kind)) {
    next.clear();
    size_t start = 0;
    for (const size_t len : fragments) {
      const Cursor c(chars, start, start + len);
      switch (st.stage) {
        case Stage::kGpt2:
          split_gpt2(c, next);
          break;
        case Stage::kLlama3:
          split_llama3(c, 3, next);
          break;
        case Stage::kQwen2:
          split_llama3(c, 1, next);
          break;
        case Stage::kGpt4o:
          split_llama3(c, 3, next, true);
          break;
        case Stage::kMatch:
          split_matches(c, st.matcher, next);
          break;
      }
      start += len;
    }
    fragments.swap(next);
  }
  std::vector<std::string_view> words;
  words.reserve(fragments.size());
  size_t start = 0;
  for (const size_t len : fragments) {
    const Utf8Char& first = chars[start];
    const Utf8Char& last = chars[start + len - 1];
    words.push_back(text.substr(first.offset, last.offset + last.length - first.offset));
    start += len;
  }
  return words;
}

}  // namespace tessera::tokenizer
