// Chat templates: a model's GGUF `tokenizer.chat_template` (Jinja) recognised by its signature as
// one of the families Tessera renders in C++ (no Jinja engine), or one named on the command line.
#pragma once

#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "host/common/error.h"
#include "host/server/api.h"

namespace tessera::server {

struct ChatTemplateError : TesseraError {
  using TesseraError::TesseraError;
};

enum class ChatFamily {
  kChatMl,   // <|im_start|>role\n...<|im_end|> (Qwen 2/2.5/3 and other ChatML models)
  kLlama3,   // <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>
  kGranite,  // <|start_of_role|>role<|end_of_role|>...<|end_of_text|>
  kMistral,  // [INST]...[/INST] (system text before the last user message)
  kHarmony,  // <|start|>role<|message|>...<|end|> with channels (gpt-oss; replies: harmony.h)
  kPlain,    // "Role: text" lines, for base models without a template (the project's own model)
};

struct ChatTemplate {
  ChatFamily family = ChatFamily::kPlain;
  std::string name;             // chatml, llama3, granite, mistral, harmony, plain
  std::string default_system;   // system text the template adds when the messages have none
  bool llama3_dated = false;    // Llama 3.1+: a system header with knowledge and today's date
  bool mistral_spaced = false;  // "[INST] text [/INST]" (v1) instead of "[INST]text[/INST]"
  std::string eos_text;         // what an assistant turn ends with (Mistral: </s>)
};

// The names --chat-template accepts.
std::vector<std::string> chat_template_names();

// A template by name (chat_template_names()). Throws ChatTemplateError listing the names.
ChatTemplate chat_template_by_name(const std::string& name);

// The family of a Jinja template text, by its signature. Throws ChatTemplateError naming `source`
// (the GGUF key or file) and the families known when none matches.
ChatTemplate recognise_chat_template(std::string_view jinja, const std::string& source);

// The template `choice` selects: a name of chat_template_names() or a file holding a Jinja
// template of one of those families. Throws ChatTemplateError naming `key` (the flag or config
// key that made the choice) when it is neither, or the file's family is not recognised.
ChatTemplate chat_template_by_choice(const std::string& choice, const std::string& key);

// What a rendering may depend on besides the messages.
struct ChatRenderOptions {
  std::time_t now = 0;           // the date templates write (granite, harmony); 0: the clock's
  std::string reasoning_effort;  // harmony's "Reasoning:" line: low, medium, high ("": medium)
};

// The prompt text for `messages` ending with the assistant's turn opened (the generation
// prompt). The BOS token is not written: the tokenizer adds it as the vocabulary says. Throws
// ApiError (400, param "messages") when the template cannot take the messages (e.g. Mistral's
// strict user/assistant alternation, harmony's system message other than the first).
std::string apply_chat_template(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                                const ChatRenderOptions& options = {});

}  // namespace tessera::server
