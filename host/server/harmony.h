// The harmony reply format (gpt-oss) read back from the model's output text: messages in channels
// (`<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...`)
// split into the reply (`content`) and its reasoning, incrementally, for streamed answers.
#pragma once

#include <string>
#include <string_view>

namespace tessera::server {

// Text a piece of output adds to the reply and to its reasoning.
struct HarmonyDelta {
  std::string reasoning;  // the analysis channel
  std::string content;    // the final channel (and commentary without a recipient)
};

// Reads what the model writes after the generation prompt `<|start|>assistant` (special tokens
// rendered as text), piece by piece: a marker split across pieces is held back until it is whole.
// A message's header (`<|channel|>NAME`, optionally ` to=RECIPIENT` and `<|constrain|>TYPE`) ends
// at `<|message|>`; its body ends at `<|end|>` (another message may follow after `<|start|>ROLE`)
// or `<|return|>` / `<|call|>` (the end of the reply: later text is ignored). The analysis
// channel is reasoning; final and commentary are content; a message to a recipient other than
// the assistant (a tool call: the daemon serves no tools) is dropped. Header text that never
// opens a message (a model that does not write harmony) is given back as content by finish().
// Not thread-safe (one per request).
class HarmonyParser {
 public:
  HarmonyDelta push(std::string_view text);
  // The end of the output: what was held back as a possible marker goes where it was going.
  HarmonyDelta finish();
  bool done() const { return state_ == State::kDone; }

 private:
  enum class State { kHeader, kBody, kDone };
  enum class Sink { kReasoning, kContent, kDrop };
  void text(std::string_view t, HarmonyDelta& out);
  void marker(std::string_view m, HarmonyDelta& out);
  void open_message();

  State state_ = State::kHeader;
  Sink sink_ = Sink::kContent;
  bool opened_ = false;  // a message has opened in this reply
  std::string header_;   // the current header's text, markers included
  std::string pending_;  // a tail that may start a marker
};

}  // namespace tessera::server
