// Unicode helpers the tokenizers need: lenient UTF-8 decoding, general-category flags of a
// codepoint (from a generated table), White_Space, and GPT-2's byte <-> printable-codepoint
// mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::tokenizer {

// Category flags of a codepoint; one category bit per codepoint plus kCpWhitespace.
// Values match the generator (gen_unicode_tables.py).
enum CodepointFlag : uint16_t {
  kCpUndefined = 0x01,    // unassigned (Cn)
  kCpNumber = 0x02,       // \p{N}
  kCpLetter = 0x04,       // \p{L}
  kCpSeparator = 0x08,    // \p{Z}
  kCpMark = 0x10,         // \p{M}
  kCpPunctuation = 0x20,  // \p{P}
  kCpSymbol = 0x40,       // \p{S}
  kCpControl = 0x80,      // \p{C} other than Cn
  kCpWhitespace = 0x100,  // Unicode White_Space property (what \s means in the tokenizers' regexes)
};

// Flags of a codepoint; codepoints past U+10FFFF are kCpUndefined. Thread-safe.
uint16_t codepoint_flags(uint32_t cp);

// One decoded character of a UTF-8 string: its codepoint and where its bytes are.
struct Utf8Char {
  uint32_t cp;      // U+FFFD for a byte that does not start a valid sequence
  uint32_t offset;  // byte offset in the source text
  uint32_t length;  // bytes (1 for an invalid byte, so the bytes are never lost)
};

// Decodes text leniently: an invalid or truncated sequence yields U+FFFD for its first byte and
// decoding resumes at the next byte. Overlong forms and surrogates count as invalid.
std::vector<Utf8Char> decode_utf8(std::string_view text);

// Appends the UTF-8 encoding of cp (cp must be <= 0x10FFFF).
void append_utf8(std::string& out, uint32_t cp);

// Byte length of the UTF-8 sequence a lead byte announces (1 for continuation/invalid bytes), the
// way SentencePiece-style tokenizers split text into symbols.
size_t utf8_sequence_length(uint8_t lead);

// GPT-2 byte-level BPE maps each byte to a printable codepoint so tokens are valid text.
uint32_t byte_to_gpt2_codepoint(uint8_t byte);
// Inverse of byte_to_gpt2_codepoint; returns -1 for a codepoint that no byte maps to.
int gpt2_codepoint_to_byte(uint32_t cp);

namespace detail {
struct CategoryRange {
  uint32_t start;
  uint8_t flags;
};
extern const CategoryRange kCategoryRanges[];
extern const size_t kCategoryRangeCount;
}  // namespace detail

}  // namespace tessera::tokenizer
