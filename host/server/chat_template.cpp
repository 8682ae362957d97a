// The chat template families rendered in C++, each written from the family's reference template
// (see chat_template.h for the signatures).
#include "host/server/chat_template.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>

namespace tessera::server {

namespace {

bool has(std::string_view text, std::string_view what) {
  return text.find(what) != std::string_view::npos;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return {};
  const auto e = s.find_last_not_of(" \t\n\r");
  return s.substr(b, e - b + 1);
}

// `now` (0: the clock's) in strftime's `format`, local time, as the templates' strftime_now writes
// today (llama.cpp's Jinja engine uses local time too).
std::string date_text(std::time_t now, const char* format) {
  const std::time_t t = now ? now : std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), format, &tm);
  return buf;
}

std::string render_chatml(const ChatTemplate& t, const std::vector<ChatMessage>& ms) {
  std::string out;
  if (!t.default_system.empty() && ms.front().role != "system")
    out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
  for (const auto& m : ms) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  return out + "<|im_start|>assistant\n";
}

std::string render_llama3(const ChatTemplate& t, const std::vector<ChatMessage>& ms) {
  std::string out;
  size_t first = 0;
  if (t.llama3_dated) {
    // Llama 3.1+: the system header is always written, with the template's default dates.
    std::string system;
    if (ms.front().role == "system") {
      system = trim(ms.front().content);
      first = 1;
    }
    out +=
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
        "2023\nToday Date: 26 Jul 2024\n\n" +
        system + "<|eot_id|>";
  }
  for (size_t i = first; i < ms.size(); ++i)
    out += "<|start_header_id|>" + ms[i].role + "<|end_header_id|>\n\n" + trim(ms[i].content) +
           "<|eot_id|>";
  return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
}

std::string render_granite(const ChatTemplate& t, const std::vector<ChatMessage>& ms,
                           std::time_t now) {
  std::string out;
  size_t first = 0;
  if (ms.front().role == "system") {
    out += "<|start_of_role|>system<|end_of_role|>" + ms.front().content + "<|end_of_text|>\n";
    first = 1;
  } else if (!t.default_system.empty()) {
    out +=
        "<|start_of_role|>system<|end_of_role|>Knowledge Cutoff Date: April 2024. Today's "
        "Date: " +
        date_text(now, "%B %d, %Y") + ". " + t.default_system + "<|end_of_text|>\n";
  }
  for (size_t i = first; i < ms.size(); ++i)
    out +=
        "<|start_of_role|>" + ms[i].role + "<|end_of_role|>" + ms[i].content + "<|end_of_text|>\n";
  return out + "<|start_of_role|>assistant<|end_of_role|>";
}

std::string render_mistral(const ChatTemplate& t, const std::vector<ChatMessage>& ms) {
  size_t first = 0;
  std::string system;
  bool has_system = false;
  if (ms.front().role == "system") {
    system = ms.front().content;
    has_system = true;
    first = 1;
  }
  size_t last_user = ms.size();
  for (size_t i = first, k = 0; i < ms.size(); ++i, ++k) {
    const bool user = ms[i].role == "user";
    if (ms[i].role == "system" || user != (k % 2 == 0))
      throw ApiError(400,
                     "'messages' do not fit the mistral chat template: after an optional first "
                     "system message, roles must alternate user/assistant/user/... (message " +
                         std::to_string(i) + " is '" + ms[i].role + "')",
                     "messages");
    if (user) last_user = i;
  }
  if (last_user == ms.size() || ms.back().role != "user")
    throw ApiError(400, "'messages' must end with a user message for the mistral chat template",
                   "messages");
  const std::string open = t.mistral_spaced ? "[INST] " : "[INST]";
  const std::string close = t.mistral_spaced ? " [/INST]" : "[/INST]";
  std::string out;
  for (size_t i = first; i < ms.size(); ++i) {
    if (ms[i].role == "user") {
      out += open + (i == last_user && has_system ? system + "\n\n" : "") + ms[i].content + close;
    } else {
      out += (t.mistral_spaced ? " " : "") + ms[i].content + t.eos_text;
    }
  }
  return out;
}

// gpt-oss's template: its system message (identity, knowledge cutoff, today's date, reasoning
// effort, valid channels), the first system/developer message as the developer's "# Instructions",
// then user turns and earlier assistant replies (final channel; their reasoning is not sent back).
std::string render_harmony(const std::vector<ChatMessage>& ms, const ChatRenderOptions& o) {
  const std::string effort = o.reasoning_effort.empty() ? "medium" : o.reasoning_effort;
  std::string out =
      "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
      "Knowledge cutoff: 2024-06\nCurrent date: " +
      date_text(o.now, "%Y-%m-%d") + "\n\nReasoning: " + effort +
      "\n\n# Valid channels: analysis, commentary, final. Channel must be included for every "
      "message.<|end|>";
  size_t first = 0;
  if (ms.front().role == "system") {
    if (!ms.front().content.empty())
      out += "<|start|>developer<|message|># Instructions\n\n" + ms.front().content + "\n\n<|end|>";
    first = 1;
  }
  for (size_t i = first; i < ms.size(); ++i) {
    const auto& m = ms[i];
    if (m.role == "system")
      throw ApiError(400,
                     "'messages[" + std::to_string(i) +
                         "]': the harmony chat template takes a system or developer message "
                         "only as the first message",
                     "messages");
    if (m.role == "user") {
      out += "<|start|>user<|message|>" + m.content + "<|end|>";
    } else {
      if (has(m.content, "<|channel|>analysis<|message|>") ||
          has(m.content, "<|channel|>final<|message|>"))
        throw ApiError(400,
                       "'messages[" + std::to_string(i) +
                           "].content' holds harmony channel markers; send the reply text only",
                       "messages");
      out += "<|start|>assistant<|channel|>final<|message|>" + m.content + "<|end|>";
    }
  }
  return out + "<|start|>assistant";
}

std::string render_plain(const std::vector<ChatMessage>& ms) {
  std::string out;
  for (const auto& m : ms) {
    std::string role = m.role;
    role[0] = char(std::toupper(static_cast<unsigned char>(role[0])));
    out += role + ": " + m.content + "\n";
  }
  return out + "Assistant:";
}

}  // namespace

std::vector<std::string> chat_template_names() {
  return {"chatml", "llama3", "granite", "mistral", "harmony", "plain"};
}

ChatTemplate chat_template_by_name(const std::string& name) {
  ChatTemplate t;
  t.name = name;
  if (name == "chatml") {
    t.family = ChatFamily::kChatMl;
  } else if (name == "llama3") {
    t.family = ChatFamily::kLlama3;
    t.llama3_dated = true;
  } else if (name == "granite") {
    t.family = ChatFamily::kGranite;
    t.default_system = "You are Granite, developed by IBM. You are a helpful AI assistant.";
  } else if (name == "mistral") {
    t.family = ChatFamily::kMistral;
    t.eos_text = "</s>";
  } else if (name == "harmony") {
    t.family = ChatFamily::kHarmony;
  } else if (name == "plain") {
    t.family = ChatFamily::kPlain;
  } else {
    std::string names;
    for (const auto& n : chat_template_names()) names += (names.empty() ? "" : ", ") + n;
    throw ChatTemplateError("unknown chat template '" + name + "' (known: " + names +
                            "; or a file holding a Jinja template of one of these families)");
  }
  return t;
}

ChatTemplate chat_template_by_choice(const std::string& choice, const std::string& key) {
  const auto names = chat_template_names();
  if (std::find(names.begin(), names.end(), choice) != names.end())
    return chat_template_by_name(choice);
  std::ifstream in(choice, std::ios::binary);
  if (!in) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw ChatTemplateError(key + " '" + choice + "' is neither a template name (" + list +
                            ") nor a readable file");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return recognise_chat_template(ss.str(), choice);
}

ChatTemplate recognise_chat_template(std::string_view jinja, const std::string& source) {
  ChatTemplate t;
  if (has(jinja, "<|im_start|>")) {
    t = chat_template_by_name("chatml");
    if (has(jinja, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."))
      t.default_system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
    if (has(jinja, "enable_thinking")) t.name = "chatml (qwen3)";
  } else if (has(jinja, "<|start_header_id|>") && has(jinja, "<|eot_id|>")) {
    t = chat_template_by_name("llama3");
    t.llama3_dated = has(jinja, "Cutting Knowledge Date");
  } else if (has(jinja, "<|start_of_role|>")) {
    t = chat_template_by_name("granite");
    if (!has(jinja, "You are Granite, developed by IBM.")) t.default_system.clear();
  } else if (has(jinja, "<|start|>") && has(jinja, "<|channel|>") && has(jinja, "<|message|>")) {
    t = chat_template_by_name("harmony");
  } else if (has(jinja, "[INST]")) {
    t = chat_template_by_name("mistral");
    t.mistral_spaced = has(jinja, "'[INST] '") || has(jinja, "\"[INST] \"");
  } else {
    std::string head(jinja.substr(0, 60));
    for (char& c : head)
      if (c == '\n') c = ' ';
    throw ChatTemplateError(source + ": chat template not recognised (it starts '" + head +
                            "...'); Tessera renders the chatml, llama3, granite, mistral and "
                            "harmony families; pass --chat-template NAME to choose one");
  }
  return t;
}

std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& ms,
                                const ChatRenderOptions& o) {
  if (ms.empty()) throw ApiError(400, "'messages' is empty", "messages");
  switch (t.family) {
    case ChatFamily::kChatMl:
      return render_chatml(t, ms);
    case ChatFamily::kLlama3:
      return render_llama3(t, ms);
    case ChatFamily::kGranite:
      return render_granite(t, ms, o.now);
    case ChatFamily::kMistral:
      return render_mistral(t, ms);
    case ChatFamily::kHarmony:
      return render_harmony(ms, o);
    case ChatFamily::kPlain:
      return render_plain(ms);
  }
  return {};
}

}  // namespace tessera::server
