// The harmony reply parser: a small state machine over markers found in the output text.
#include "host/server/harmony.h"

#include <array>

namespace tessera::server {

namespace {

constexpr std::string_view kStart = "<|start|>", kChannel = "<|channel|>", kMessage = "<|message|>",
                           kConstrain = "<|constrain|>", kEnd = "<|end|>", kReturn = "<|return|>",
                           kCall = "<|call|>";
constexpr std::array<std::string_view, 7> kMarkers = {kStart, kChannel, kMessage, kConstrain,
                                                      kEnd,   kReturn,  kCall};

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.';
}

}  // namespace

HarmonyDelta HarmonyParser::push(std::string_view piece) {
  HarmonyDelta out;
  if (state_ == State::kDone) return out;
  pending_.append(piece);
  for (;;) {
    size_t at = std::string::npos;
    std::string_view found;
    for (const auto m : kMarkers) {
      const size_t p = pending_.find(m);
      if (p < at) {
        at = p;
        found = m;
      }
    }
    if (at == std::string::npos) break;
    text(std::string_view(pending_).substr(0, at), out);
    marker(found, out);
    pending_.erase(0, at + found.size());
    if (state_ == State::kDone) {
      pending_.clear();
      return out;
    }
  }
  // Hold back the longest tail that a later piece could complete into a marker.
  size_t keep = 0;
  for (const auto m : kMarkers)
    for (size_t n = std::min(m.size() - 1, pending_.size()); n > keep; --n)
      if (pending_.compare(pending_.size() - n, n, m.data(), n) == 0) {
        keep = n;
        break;
      }
  text(std::string_view(pending_).substr(0, pending_.size() - keep), out);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

HarmonyDelta HarmonyParser::finish() {
  HarmonyDelta out;
  text(pending_, out);
  pending_.clear();
  if (!opened_) out.content += header_;
  header_.clear();
  state_ = State::kDone;
  return out;
}

void HarmonyParser::text(std::string_view t, HarmonyDelta& out) {
  if (t.empty()) return;
  if (state_ == State::kHeader) {
    header_.append(t);
  } else if (state_ == State::kBody) {
    if (sink_ == Sink::kReasoning) out.reasoning.append(t);
    if (sink_ == Sink::kContent) out.content.append(t);
  }
}

void HarmonyParser::marker(std::string_view m, HarmonyDelta& out) {
  (void)out;
  if (m == kReturn || m == kCall) {
    state_ = State::kDone;
    return;
  }
  if (state_ == State::kHeader) {
    if (m == kMessage) {
      open_message();
      state_ = State::kBody;
    } else {
      header_.append(m);  // kept as written: the header is parsed at <|message|>
    }
    return;
  }
  // In a body.
  if (m == kEnd) {
    state_ = State::kHeader;
    header_.clear();
  } else if (m == kStart || m == kChannel) {
    // A new header without the <|end|> that should close this message.
    state_ = State::kHeader;
    header_ = std::string(m);
  }
  // A stray <|message|> or <|constrain|> inside a body is dropped.
}

void HarmonyParser::open_message() {
  std::string_view h = header_;
  if (const size_t s = h.rfind(kStart); s != std::string_view::npos)
    h.remove_prefix(s + kStart.size());
  std::string channel;
  if (const size_t c = h.rfind(kChannel); c != std::string_view::npos)
    for (size_t i = c + kChannel.size(); i < h.size() && name_char(h[i]); ++i) channel += h[i];
  // A recipient: "to=NAME" at the start of the header or after a space (in the role part or the
  // channel part).
  std::string recipient;
  for (size_t p = h.find("to="); p != std::string_view::npos; p = h.find("to=", p + 1)) {
    if (p > 0 && h[p - 1] != ' ') continue;
    for (size_t i = p + 3; i < h.size() && name_char(h[i]); ++i) recipient += h[i];
    break;
  }
  if (!recipient.empty() && recipient != "assistant")
    sink_ = Sink::kDrop;
  else if (channel == "analysis")
    sink_ = Sink::kReasoning;
  else
    sink_ = Sink::kContent;
  opened_ = true;
  header_.clear();
}

}  // namespace tessera::server
