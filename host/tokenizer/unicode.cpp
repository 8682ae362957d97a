// Unicode helpers for the tokenizers: category lookup, lenient UTF-8, GPT-2 byte mapping.
#include "host/tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace tessera::tokenizer {
namespace {

bool is_white_space(uint32_t cp) {
  // Unicode's White_Space property (PropList.txt); what the pre-tokenizer regexes mean by \s.
  if (cp >= 0x09 && cp <= 0x0D) return true;
  if (cp >= 0x2000 && cp <= 0x200A) return true;
  switch (cp) {
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return false;
  }
}

uint16_t lookup_flags(uint32_t cp) {
  if (cp > 0x10FFFF) return kCpUndefined;
  const auto* begin = detail::kCategoryRanges;
  const auto* end = begin + detail::kCategoryRangeCount;
  // Last range whose start <= cp.
  const auto* it = std::upper_bound(
      begin, end, cp, [](uint32_t v, const detail::CategoryRange& r) { return v < r.start; });
  uint16_t flags = (it == begin) ? uint16_t{kCpUndefined} : uint16_t{(it - 1)->flags};
  if (is_white_space(cp)) flags |= kCpWhitespace;
  return flags;
}

// The Basic Multilingual Plane covers nearly all text; a 128 KiB table makes its lookups O(1).
struct BmpTable {
  std::array<uint16_t, 0x10000> flags;
  BmpTable() {
    for (uint32_t cp = 0; cp < 0x10000; ++cp) flags[cp] = lookup_flags(cp);
  }
};

struct Gpt2ByteMap {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 512> cp_to_byte{};  // every mapped codepoint is < 0x144
  Gpt2ByteMap() {
    cp_to_byte.fill(-1);
    // Printable Latin-1 bytes map to themselves; the rest to 256, 257, ... in byte order.
    auto printable = [](int b) {
      return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      byte_to_cp[b] = printable(b) ? static_cast<uint32_t>(b) : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const Gpt2ByteMap& gpt2_map() {
  static const Gpt2ByteMap map;
  return map;
}

}  // namespace

uint16_t codepoint_flags(uint32_t cp) {
  static const BmpTable bmp;
  if (cp < 0x10000) return bmp.flags[cp];
  return lookup_flags(cp);
}

size_t utf8_sequence_length(uint8_t lead) {
  static constexpr uint8_t kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[lead >> 4];
}

std::vector<Utf8Char> decode_utf8(std::string_view text) {
  std::vector<Utf8Char> out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t b0 = s[i];
    uint32_t cp = 0xFFFD;
    uint32_t len = 1;
    if (b0 < 0x80) {
      cp = b0;
    } else {
      uint32_t need = 0;
      uint32_t min = 0;
      if ((b0 & 0xE0) == 0xC0) {
        need = 1;
        cp = b0 & 0x1F;
        min = 0x80;
      } else if ((b0 & 0xF0) == 0xE0) {
        need = 2;
        cp = b0 & 0x0F;
        min = 0x800;
      } else if ((b0 & 0xF8) == 0xF0) {
        need = 3;
        cp = b0 & 0x07;
        min = 0x10000;
      }
      bool ok = need > 0 && i + need < n;  // the whole sequence must be inside the text
      if (ok) {
        for (uint32_t k = 1; k <= need; ++k) {
          if ((s[i + k] & 0xC0) != 0x80) {
            ok = false;
            break;
          }
          cp = (cp << 6) | (s[i + k] & 0x3F);
        }
      }
      if (ok && (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
      if (ok) {
        len = need + 1;
      } else {
        cp = 0xFFFD;
        len = 1;
      }
    }
    out.push_back({cp, static_cast<uint32_t>(i), len});
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t byte_to_gpt2_codepoint(uint8_t byte) {
  return gpt2_map().byte_to_cp[byte];
}

int gpt2_codepoint_to_byte(uint32_t cp) {
  return cp < 512 ? gpt2_map().cp_to_byte[cp] : -1;
}

}  // namespace tessera::tokenizer
