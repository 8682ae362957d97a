// The daemon's pure parts: request parsing and its errors, streamed text with stop strings and
// UTF-8 boundaries, chat templates (recognised from the reference Jinja files when present).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "host/server/api.h"
#include "host/server/chat_template.h"

namespace tessera::server {
namespace {

ApiError parse_error(const std::string& body, Endpoint ep = Endpoint::kCompletions) {
  try {
    parse_completion_request(body, ep);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

TEST(Api, ParsesEveryField) {
  const auto r = parse_completion_request(
      R"({"model":"m","prompt":"hi","max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":3,)"
      R"("seed":42,"stop":["a","bc"],"stream":true,"stream_options":{"include_usage":true},)"
      R"("n":1,"unknown_field":{"x":1}})",
      Endpoint::kCompletions);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompt, "hi");
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.top_p, 0.9f);
  EXPECT_EQ(r.top_k, 3);
  EXPECT_EQ(*r.seed, 42u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  const auto t = parse_completion_request(R"({"prompt":[1,2,3]})", Endpoint::kCompletions);
  EXPECT_TRUE(t.prompt_is_tokens);
  EXPECT_EQ(t.prompt_tokens, (std::vector<int32_t>{1, 2, 3}));
  const auto c = parse_completion_request(
      R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]})",
      Endpoint::kChat);
  ASSERT_EQ(c.messages.size(), 2u);
  EXPECT_EQ(c.messages[1].content, "ab");
}

TEST(Api, RefusesBadFieldsNamingThem) {
  struct Case {
    std::string body, param;
  };
  const Case cases[] = {
      {R"({"prompt":"x","max_tokens":"many"})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":-1})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":0})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":1.5})", "max_tokens"},
      {R"({"prompt":"x","temperature":3})", "temperature"},
      {R"({"prompt":"x","temperature":"hot"})", "temperature"},
      {R"({"prompt":"x","top_p":0})", "top_p"},
      {R"({"prompt":"x","top_k":-2})", "top_k"},
      {R"({"prompt":"x","n":2})", "n"},
      {R"({"prompt":"x","stop":["a","b","c","d","e"]})", "stop"},
      {R"({"prompt":"x","stop":[""]})", "stop"},
      {R"({"prompt":"x","stop":7})", "stop"},
      {R"({"prompt":"x","stream":"yes"})", "stream"},
      {R"({"prompt":""})", "prompt"},
      {R"({"prompt":[]})", "prompt"},
      {R"({"prompt":["a","b"]})", "prompt"},
      {R"({"prompt":[1,-5]})", "prompt[1]"},
      {R"({"prompt":12})", "prompt"},
      {R"({"max_tokens":3})", "prompt"},
      {R"({"prompt":"x","model":5})", "model"},
  };
  for (const auto& c : cases) {
    const auto e = parse_error(c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.what();
    EXPECT_NE(std::string(e.what()).find(c.param), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_error(R"({"messages":[]})", Endpoint::kChat).param, "messages");
  EXPECT_EQ(parse_error(R"({"messages":[{"role":"robot","content":"x"}]})", Endpoint::kChat).param,
            "messages[0].role");
  EXPECT_EQ(parse_error(R"({"messages":[{"role":"user"}]})", Endpoint::kChat).param,
            "messages[0].content");
  EXPECT_EQ(parse_error(R"({"messages":"hi"})", Endpoint::kChat).param, "messages");
}

TEST(Api, RefusesMalformedBodies) {
  for (const std::string body : {"", "{", "[1,2]", "\"x\"", "{\"prompt\":\"x\",}", "nul"}) {
    const auto e = parse_error(body);
    EXPECT_EQ(e.status, 400) << body;
  }
  const auto e = parse_error(std::string("{\"prompt\":\"a\xC3\x28\"}"));
  EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos) << e.what();
  std::string deep(200, '[');
  EXPECT_EQ(parse_error(deep).status, 400);
  // The error object OpenAI clients read.
  const std::string body = error_body(ApiError(400, "'n' must be 1", "n"));
  EXPECT_NE(body.find(R"("param":"n")"), std::string::npos) << body;
  EXPECT_NE(body.find(R"("type":"invalid_request_error")"), std::string::npos) << body;
}

TEST(TextStream, HoldsBackStopPrefixesAndPartialCharacters) {
  TextStream s({"END"});
  EXPECT_EQ(s.push("hello E"), "hello ");
  EXPECT_EQ(s.push("N"), "");
  EXPECT_EQ(s.push("x"), "ENx");
  EXPECT_EQ(s.push("a\xC3"), "a");  // the first byte of 'é' waits for the second
  EXPECT_EQ(s.push("\xA9 EN"), "\xC3\xA9 ");
  EXPECT_EQ(s.push("D and more"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.finish(), "");
  TextStream t({});
  EXPECT_EQ(t.push("\xE2\x82"), "");
  EXPECT_EQ(t.finish(), "\xEF\xBF\xBD\xEF\xBF\xBD");  // an unfinished character at the end
  EXPECT_EQ(sanitize_utf8("a\xFF"
                          "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_FALSE(invalid_utf8_offset("ok \xE2\x82\xAC"));
  EXPECT_EQ(*invalid_utf8_offset("ok\xED\xA0\x80"), 2u);  // a surrogate
}

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Who?"}};

TEST(ChatTemplate, RendersEachFamily) {
  EXPECT_EQ(apply_chat_template(chat_template_by_name("chatml"), kConversation),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWho?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(chat_template_by_name("llama3"), kConversation),
            "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
            "2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_"
            "header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello."
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho?<|eot_id|><|start_header_"
            "id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(apply_chat_template(chat_template_by_name("granite"), kConversation),
            "<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n<|start_of_role|>"
            "user<|end_of_role|>Hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"
            "Hello.<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Who?<|end_of_text|>\n"
            "<|start_of_role|>assistant<|end_of_role|>");
  EXPECT_EQ(apply_chat_template(chat_template_by_name("mistral"), kConversation),
            "[INST]Hi[/INST]Hello.</s>[INST]Be brief.\n\nWho?[/INST]");
  EXPECT_EQ(apply_chat_template(chat_template_by_name("plain"), kConversation),
            "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Who?\nAssistant:");
  // Mistral's template refuses roles that do not alternate.
  try {
    apply_chat_template(chat_template_by_name("mistral"), {{"user", "a"}, {"user", "b"}});
    ADD_FAILURE() << "accepted two user messages in a row";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "messages");
  }
  EXPECT_THROW(chat_template_by_name("jinja2"), ChatTemplateError);
  EXPECT_THROW(recognise_chat_template("{{ messages }}", "x.jinja"), ChatTemplateError);
}

std::string models_dir() {
  if (const char* dir = std::getenv("TESSERA_MODELS_DIR")) return dir;
  return std::string(TESSERA_SOURCE_DIR) + "/../shared/models";
}

TEST(ChatTemplate, RecognisesReferenceTemplates) {
  const std::filesystem::path dir = models_dir() + "/templates";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " not found (TESSERA_MODELS_DIR)";
  const std::pair<const char*, const char*> expected[] = {
      {"Qwen-Qwen2.5-7B-Instruct.jinja", "chatml"},
      {"Qwen-Qwen3-0.6B.jinja", "chatml (qwen3)"},
      {"meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3"},
      {"ibm-granite-granite-3.3-2B-Instruct.jinja", "granite"},
      {"mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral"}};
  for (const auto& [file, name] : expected) {
    std::ifstream in(dir / file);
    std::stringstream ss;
    ss << in.rdbuf();
    const auto t = recognise_chat_template(ss.str(), file);
    EXPECT_EQ(t.name, name) << file;
  }
  // Qwen 2.5 adds its system message when the conversation has none.
  std::ifstream in(dir / "Qwen-Qwen2.5-7B-Instruct.jinja");
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(apply_chat_template(recognise_chat_template(ss.str(), "qwen"), {{"user", "Hi"}}),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A template of another family is named in the error.
  std::ifstream nem(dir / "NVIDIA-Nemotron-Nano-v2.jinja");
  std::stringstream ns;
  ns << nem.rdbuf();
  if (ns.str().find("<|im_start|>") == std::string::npos) {
    try {
      recognise_chat_template(ns.str(), "NVIDIA-Nemotron-Nano-v2.jinja");
      ADD_FAILURE() << "Nemotron's template recognised";
    } catch (const ChatTemplateError& e) {
      EXPECT_NE(std::string(e.what()).find("NVIDIA-Nemotron-Nano-v2.jinja"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace tessera::server
