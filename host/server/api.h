// The OpenAI request bodies the daemon accepts (/v1/completions, /v1/chat/completions), parsed and
// checked field by field, the error object it answers with, and the incremental text of a stream
// of tokens (UTF-8 boundaries and stop strings).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "host/common/error.h"

namespace tessera::server {

// A request the daemon refuses: the HTTP status, the message (naming the field and the problem),
// the field (OpenAI's `param`; empty: none), OpenAI's error `type` and `code`.
struct ApiError : TesseraError {
  ApiError(int status, const std::string& message, std::string param = {},
           std::string type = "invalid_request_error", std::string code = {});
  int status;
  std::string param, type, code;
};

// {"error": {"message", "type", "param", "code"}} as OpenAI writes it.
std::string error_body(const ApiError& error);

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

enum class Endpoint { kCompletions, kChat };

// One completion request, every field checked. Unknown fields are ignored, as OpenAI does.
struct CompletionRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;                   // "" when not given
  std::string prompt;                  // completions: text (when !prompt_is_tokens)
  std::vector<int32_t> prompt_tokens;  // completions: token ids given instead of text
  bool prompt_is_tokens = false;
  std::vector<ChatMessage> messages;  // chat
  std::optional<int> max_tokens;  // absent: 16 for completions, the rest of the context for chat
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;
  std::optional<uint64_t> seed;  // absent: a random seed
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;    // stream_options.include_usage
  bool ignore_eos = false;       // llama-server's extension: generate max_tokens tokens regardless
  std::string reasoning_effort;  // chat: low, medium or high ("": the template's default)
};

// Parses a request body. Throws ApiError (400) naming the field: invalid UTF-8 (with its byte
// offset), malformed JSON, a body that is not an object, a field of the wrong type or out of range
// (max_tokens < 1, temperature outside [0, 2], top_p outside (0, 1], top_k < 0, n != 1, more
// than 4 stop strings or an empty one, an empty prompt, messages that are not {role, content},
// a reasoning_effort other than low, medium, high).
CompletionRequest parse_completion_request(std::string_view body, Endpoint endpoint);

// The offset of the first byte of `text` that is not part of valid UTF-8; nullopt when it all is.
std::optional<size_t> invalid_utf8_offset(std::string_view text);

// Text of a stream of tokens: each token's bytes go in, the text that is safe to send comes out —
// never a partial UTF-8 character, never the start of what may become a stop string. When a stop
// string appears the text before it is the last output and stopped() turns true.
// Not thread-safe (one per request).
class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stop) : stop_(std::move(stop)) {}
  std::string push(std::string_view bytes);
  // The end of generation: whatever was held back (invalid UTF-8 replaced by U+FFFD).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_;
  std::string pending_;
  bool stopped_ = false;
};

// `text` with every byte that is not part of valid UTF-8 replaced by U+FFFD.
std::string sanitize_utf8(std::string_view text);

}  // namespace tessera::server
