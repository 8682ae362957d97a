// Request parsing and checks for the OpenAI endpoints; error objects; streamed text.
#include "host/server/api.h"

#include <boost/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace tessera::server {

namespace json = boost::json;

ApiError::ApiError(int status_, const std::string& message, std::string param_, std::string type_,
                   std::string code_)
    : TesseraError(message),
      status(status_),
      param(std::move(param_)),
      type(std::move(type_)),
      code(std::move(code_)) {}

std::string error_body(const ApiError& e) {
  json::object err;
  err["message"] = e.what();
  err["type"] = e.type;
  err["param"] = e.param.empty() ? json::value(nullptr) : json::value(e.param);
  err["code"] = e.code.empty() ? json::value(nullptr) : json::value(e.code);
  json::object body;
  body["error"] = std::move(err);
  return json::serialize(body);
}

namespace {

// Length of the UTF-8 sequence starting at s[i] when it is valid and complete, else 0.
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto b = uint8_t(s[i]);
  if (b < 0x80) return 1;
  size_t n;
  uint32_t cp;
  if ((b & 0xE0) == 0xC0) {
    n = 2;
    cp = b & 0x1F;
  } else if ((b & 0xF0) == 0xE0) {
    n = 3;
    cp = b & 0x0F;
  } else if ((b & 0xF8) == 0xF0) {
    n = 4;
    cp = b & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto c = uint8_t(s[i + k]);
    if ((c & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
      cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

// Whether s[i..] is the start of a valid sequence that more bytes could complete.
bool utf8_incomplete(std::string_view s, size_t i) {
  const auto b = uint8_t(s[i]);
  size_t n = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
  if (n == 0 || i + n <= s.size()) return false;
  for (size_t k = i + 1; k < s.size(); ++k)
    if ((uint8_t(s[k]) & 0xC0) != 0x80) return false;
  return true;
}

[[noreturn]] void bad(const std::string& field, const std::string& problem) {
  throw ApiError(400, "'" + field + "' " + problem, field);
}

double number(const json::value& v, const std::string& field) {
  if (v.is_double()) return v.get_double();
  if (v.is_int64()) return double(v.get_int64());
  if (v.is_uint64()) return double(v.get_uint64());
  bad(field, "must be a number");
}

int64_t integer(const json::value& v, const std::string& field) {
  if (v.is_int64()) return v.get_int64();
  if (v.is_uint64()) {
    if (v.get_uint64() > uint64_t(std::numeric_limits<int64_t>::max()))
      bad(field, "is out of range");
    return int64_t(v.get_uint64());
  }
  if (v.is_double()) {
    const double d = v.get_double();
    if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e18) return int64_t(d);
  }
  bad(field, "must be an integer");
}

const json::string& string_of(const json::value& v, const std::string& field) {
  if (!v.is_string()) bad(field, "must be a string");
  return v.get_string();
}

void parse_prompt(const json::value& v, CompletionRequest& r) {
  if (v.is_string()) {
    r.prompt = std::string(v.get_string());
    if (r.prompt.empty()) bad("prompt", "is empty");
    return;
  }
  if (!v.is_array()) bad("prompt", "must be a string, an array of one string or of token ids");
  const auto& a = v.get_array();
  if (a.empty()) bad("prompt", "is empty");
  if (a[0].is_string()) {
    if (a.size() != 1)
      bad("prompt",
          "holds " + std::to_string(a.size()) + " prompts; one prompt per request is served");
    parse_prompt(a[0], r);
    return;
  }
  if (a[0].is_array()) bad("prompt", "holds several token lists; one prompt per request is served");
  r.prompt_is_tokens = true;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string field = "prompt[" + std::to_string(i) + "]";
    const int64_t id = integer(a[i], field);
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      bad(field, "is not a token id (" + std::to_string(id) + ")");
    r.prompt_tokens.push_back(int32_t(id));
  }
}

void parse_messages(const json::value& v, CompletionRequest& r) {
  if (!v.is_array()) bad("messages", "must be an array of {role, content} objects");
  const auto& a = v.get_array();
  if (a.empty()) bad("messages", "is empty");
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!a[i].is_object()) bad(at, "must be an object with role and content");
    const auto& m = a[i].get_object();
    ChatMessage msg;
    const auto* role = m.if_contains("role");
    if (!role) bad(at + ".role", "is missing");
    msg.role = std::string(string_of(*role, at + ".role"));
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
        msg.role != "developer")
      bad(at + ".role", "'" + msg.role + "' is not one of system, developer, user, assistant");
    if (msg.role == "developer") msg.role = "system";
    const auto* content = m.if_contains("content");
    if (!content || content->is_null()) bad(at + ".content", "is missing");
    if (content->is_string()) {
      msg.content = std::string(content->get_string());
    } else if (content->is_array()) {
      // Content parts: only text parts can be served by a text model.
      for (size_t k = 0; k < content->get_array().size(); ++k) {
        const std::string pat = at + ".content[" + std::to_string(k) + "]";
        const auto& part = content->get_array()[k];
        if (!part.is_object()) bad(pat, "must be an object {type, text}");
        const auto* type = part.get_object().if_contains("type");
        if (!type || !type->is_string() || type->get_string() != "text")
          bad(pat + ".type", "must be \"text\" (this model reads text only)");
        const auto* text = part.get_object().if_contains("text");
        if (!text) bad(pat + ".text", "is missing");
        msg.content += std::string(string_of(*text, pat + ".text"));
      }
    } else {
      bad(at + ".content", "must be a string or an array of text parts");
    }
    r.messages.push_back(std::move(msg));
  }
}

}  // namespace

std::optional<size_t> invalid_utf8_offset(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i);
    if (n == 0) return i;
    i += n;
  }
  return std::nullopt;
}

std::string sanitize_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

CompletionRequest parse_completion_request(std::string_view body, Endpoint endpoint) {
  if (const auto bad_at = invalid_utf8_offset(body))
    throw ApiError(400,
                   "the request body is not valid UTF-8 (byte " + std::to_string(*bad_at) + ")");
  boost::system::error_code ec;
  json::parse_options opts;
  opts.max_depth = 64;
  const json::value doc = json::parse(body, ec, {}, opts);
  if (ec) throw ApiError(400, "the request body is not valid JSON: " + ec.message());
  if (!doc.is_object()) throw ApiError(400, "the request body must be a JSON object");
  const auto& o = doc.get_object();
  CompletionRequest r;
  r.endpoint = endpoint;

  if (const auto* v = o.if_contains("model"); v && !v->is_null())
    r.model = std::string(string_of(*v, "model"));
  if (endpoint == Endpoint::kCompletions) {
    const auto* p = o.if_contains("prompt");
    if (!p || p->is_null()) bad("prompt", "is missing");
    parse_prompt(*p, r);
  } else {
    const auto* m = o.if_contains("messages");
    if (!m || m->is_null()) bad("messages", "is missing");
    parse_messages(*m, r);
  }
  for (const char* field : {"max_tokens", "max_completion_tokens"}) {
    if (const auto* v = o.if_contains(field); v && !v->is_null()) {
      const int64_t n = integer(*v, field);
      if (n < 1) bad(field, "must be at least 1 (got " + std::to_string(n) + ")");
      r.max_tokens = int(std::min<int64_t>(n, std::numeric_limits<int>::max()));
    }
  }
  if (const auto* v = o.if_contains("temperature"); v && !v->is_null()) {
    const double t = number(*v, "temperature");
    if (!(t >= 0 && t <= 2)) bad("temperature", "must be between 0 and 2");
    r.temperature = float(t);
  }
  if (const auto* v = o.if_contains("top_p"); v && !v->is_null()) {
    const double p = number(*v, "top_p");
    if (!(p > 0 && p <= 1)) bad("top_p", "must be in (0, 1]");
    r.top_p = float(p);
  }
  if (const auto* v = o.if_contains("top_k"); v && !v->is_null()) {
    const int64_t k = integer(*v, "top_k");
    if (k < 0) bad("top_k", "must be >= 0 (0: all tokens)");
    r.top_k = int(std::min<int64_t>(k, std::numeric_limits<int>::max()));
  }
  if (const auto* v = o.if_contains("seed"); v && !v->is_null()) {
    if (v->is_uint64())
      r.seed = v->get_uint64();
    else
      r.seed = uint64_t(integer(*v, "seed"));
  }
  if (const auto* v = o.if_contains("n"); v && !v->is_null()) {
    if (integer(*v, "n") != 1) bad("n", "must be 1 (one choice per request is served)");
  }
  if (const auto* v = o.if_contains("best_of"); v && !v->is_null()) {
    if (integer(*v, "best_of") != 1) bad("best_of", "must be 1");
  }
  if (const auto* v = o.if_contains("stop"); v && !v->is_null()) {
    if (v->is_string()) {
      r.stop.push_back(std::string(v->get_string()));
    } else if (v->is_array()) {
      const auto& a = v->get_array();
      if (a.size() > 4) bad("stop", "holds " + std::to_string(a.size()) + " strings; at most 4");
      for (size_t i = 0; i < a.size(); ++i)
        r.stop.push_back(std::string(string_of(a[i], "stop[" + std::to_string(i) + "]")));
    } else {
      bad("stop", "must be a string or an array of strings");
    }
    for (const auto& s : r.stop)
      if (s.empty()) bad("stop", "holds an empty string");
  }
  if (const auto* v = o.if_contains("stream"); v && !v->is_null()) {
    if (!v->is_bool()) bad("stream", "must be true or false");
    r.stream = v->get_bool();
  }
  if (const auto* v = o.if_contains("ignore_eos"); v && !v->is_null()) {
    if (!v->is_bool()) bad("ignore_eos", "must be true or false");
    r.ignore_eos = v->get_bool();
  }
  if (const auto* v = o.if_contains("reasoning_effort"); v && !v->is_null()) {
    r.reasoning_effort = std::string(string_of(*v, "reasoning_effort"));
    if (r.reasoning_effort != "low" && r.reasoning_effort != "medium" &&
        r.reasoning_effort != "high")
      bad("reasoning_effort", "must be low, medium or high (got '" + r.reasoning_effort + "')");
  }
  if (const auto* v = o.if_contains("stream_options"); v && !v->is_null()) {
    if (!v->is_object()) bad("stream_options", "must be an object");
    if (const auto* u = v->get_object().if_contains("include_usage"); u && !u->is_null()) {
      if (!u->is_bool()) bad("stream_options.include_usage", "must be true or false");
      r.include_usage = u->get_bool();
    }
  }
  return r;
}

std::string TextStream::push(std::string_view bytes) {
  if (stopped_) return {};
  pending_.append(bytes);
  // A stop string: the text before it is the last output.
  size_t first = std::string::npos;
  for (const auto& s : stop_) first = std::min(first, pending_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = sanitize_utf8(std::string_view(pending_).substr(0, first));
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that may start a stop string, and a partial UTF-8 character.
  size_t keep = 0;
  for (const auto& s : stop_)
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > keep; --n)
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  size_t cut = pending_.size() - keep;
  for (size_t i = cut >= 4 ? cut - 3 : 0; i < cut; ++i)
    if (utf8_incomplete(std::string_view(pending_).substr(0, cut), i)) {
      cut = i;
      break;
    }
  std::string out = sanitize_utf8(std::string_view(pending_).substr(0, cut));
  pending_.erase(0, cut);
  return out;
}

std::string TextStream::finish() {
  if (stopped_) return {};
  std::string out = sanitize_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace tessera::server
