// The daemon's pure parts: request parsing and its errors, streamed text with stop strings and
// UTF-8 boundaries, chat templates (recognised from the reference Jinja files when present).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "host/server/api.h"
#include "host/server/chat_template.h"
#include "host/server/harmony.h"
#include "host/server/metrics.h"

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
      {R"({"prompt":"x","reasoning_effort":"max"})", "reasoning_effort"},
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

// gpt-oss's harmony template, derived by hand from its Jinja source (models/templates/
// openai-gpt-oss-120b.jinja in llama.cpp: the system message, the first system/developer message
// as "# Instructions", earlier replies on the final channel, the generation prompt).
TEST(ChatTemplate, RendersHarmony) {
  ChatRenderOptions o;
  o.now = 1796212800;  // 2026-12-02 12:00 UTC
  const std::string system_part =
      "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
      "Knowledge cutoff: 2024-06\nCurrent date: 2026-12-02\n\nReasoning: ";
  const std::string channels =
      "\n\n# Valid channels: analysis, commentary, final. Channel must be included for every "
      "message.<|end|>";
  const auto harmony = chat_template_by_name("harmony");
  EXPECT_EQ(apply_chat_template(harmony, kConversation, o),
            system_part + "medium" + channels +
                "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>"
                "<|start|>user<|message|>Hi<|end|>"
                "<|start|>assistant<|channel|>final<|message|>Hello.<|end|>"
                "<|start|>user<|message|>Who?<|end|><|start|>assistant");
  o.reasoning_effort = "high";
  EXPECT_EQ(
      apply_chat_template(harmony, {{"user", "Hi"}}, o),
      system_part + "high" + channels + "<|start|>user<|message|>Hi<|end|><|start|>assistant");
  // An empty first system message writes no developer message.
  o.reasoning_effort.clear();
  EXPECT_EQ(
      apply_chat_template(harmony, {{"system", ""}, {"user", "Hi"}}, o),
      system_part + "medium" + channels + "<|start|>user<|message|>Hi<|end|><|start|>assistant");
  // What the template refuses (or would drop): a later system message, channel markers in a reply.
  for (const auto& ms : std::vector<std::vector<ChatMessage>>{
           {{"user", "Hi"}, {"system", "late"}},
           {{"user", "Hi"}, {"assistant", "<|channel|>analysis<|message|>x"}, {"user", "?"}}}) {
    try {
      apply_chat_template(harmony, ms, o);
      ADD_FAILURE() << "accepted " << ms[1].content;
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_NE(std::string(e.what()).find("messages[1]"), std::string::npos) << e.what();
    }
  }
  // Recognised by its markers (as the GGUF's tokenizer.chat_template writes them).
  EXPECT_EQ(recognise_chat_template("{{- \"<|start|>system<|message|>\" }}{%- for m in messages %}"
                                    "{{- \"<|start|>assistant<|channel|>final<|message|>\" }}",
                                    "tokenizer.chat_template")
                .name,
            "harmony");
}

// The concatenated deltas of `pieces` pushed one by one, then finish().
HarmonyDelta parse_all(const std::vector<std::string>& pieces) {
  HarmonyParser p;
  HarmonyDelta all;
  for (const auto& piece : pieces) {
    const auto d = p.push(piece);
    all.reasoning += d.reasoning;
    all.content += d.content;
  }
  const auto d = p.finish();
  all.reasoning += d.reasoning;
  all.content += d.content;
  return all;
}

TEST(Harmony, SplitsReasoningFromTheReply) {
  const std::string reply =
      "<|channel|>analysis<|message|>User says hi. <reply> briefly.<|end|>"
      "<|start|>assistant<|channel|>final<|message|>Hello <b>there</b>!<|return|>";
  const auto whole = parse_all({reply});
  EXPECT_EQ(whole.reasoning, "User says hi. <reply> briefly.");
  EXPECT_EQ(whole.content, "Hello <b>there</b>!");
  // Split in two at every byte (markers cut anywhere) and one byte at a time: the same text, and
  // no piece of a marker ever comes out.
  for (size_t cut = 0; cut <= reply.size(); ++cut) {
    const auto d = parse_all({reply.substr(0, cut), reply.substr(cut)});
    EXPECT_EQ(d.reasoning, whole.reasoning) << cut;
    EXPECT_EQ(d.content, whole.content) << cut;
  }
  HarmonyParser p;
  std::string reasoning, content;
  for (char c : reply) {
    const auto d = p.push(std::string(1, c));
    EXPECT_EQ(d.reasoning.find("<|"), std::string::npos) << d.reasoning;
    EXPECT_EQ(d.content.find("<|"), std::string::npos) << d.content;
    reasoning += d.reasoning;
    content += d.content;
  }
  EXPECT_TRUE(p.done());
  EXPECT_EQ(reasoning, whole.reasoning);
  EXPECT_EQ(content, whole.content);
  // Streamed as it comes: the analysis text before the final channel opens.
  HarmonyParser q;
  EXPECT_EQ(q.push("<|channel|>analy").reasoning, "");
  EXPECT_EQ(q.push("sis<|message|>Thin").reasoning, "Thin");
  EXPECT_EQ(q.push("king<|e").reasoning, "king");
  const auto d = q.push("nd|><|start|>assistant<|channel|>final<|message|>Hi");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.content, "Hi");
  EXPECT_EQ(q.push("<|return|>ignored").content, "");
  EXPECT_TRUE(q.done());
}

TEST(Harmony, ChannelsRecipientsAndTextWithoutMarkers) {
  // A commentary preamble is content; a tool call (a recipient other than the assistant) is
  // dropped, in the role part or the channel part of its header; a stray commentary header
  // before the analysis channel does not hide it.
  const auto d =
      parse_all({"<|channel|>commentary<|message|>Let me check. <|end|>"
                 "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
                 "{\"city\":\"Oslo\"}<|call|>"});
  EXPECT_EQ(d.content, "Let me check. ");
  EXPECT_EQ(d.reasoning, "");
  const auto t = parse_all(
      {"<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|end|>"
       "<|start|>assistant<|channel|>commentary to=assistant<|channel|>analysis<|message|>hm"
       "<|end|><|start|>assistant<|channel|>final<|message|>ok"});
  EXPECT_EQ(t.reasoning, "hm");
  EXPECT_EQ(t.content, "ok");  // cut off by max_tokens: what came is kept
  // A model that writes no harmony: its text is the content, given back at the end.
  HarmonyParser p;
  EXPECT_EQ(p.push("plain words <|").content, "");
  EXPECT_EQ(p.push("x").content, "");
  EXPECT_EQ(p.finish().content, "plain words <|x");
  // A header cut off by the end of output after a message opened is not content.
  EXPECT_EQ(parse_all({"<|channel|>final<|message|>A<|end|><|start|>assistant<|chan"}).content,
            "A");
  // A message the model did not close before starting the next one.
  const auto u =
      parse_all({"<|channel|>analysis<|message|>r<|start|>assistant<|channel|>final"
                 "<|message|>c<|return|>"});
  EXPECT_EQ(u.reasoning, "r");
  EXPECT_EQ(u.content, "c");
}

TEST(Metrics, KvBlocksPerDeviceAndLayerGroup) {
  Metrics m;
  EngineGauges g;
  g.kv = {{"gpu0", "window_128", 3, 10}, {"gpu0", "full", 7, 10}, {"cpu0", "full", 7, 10}};
  m.set_engine(g);
  const std::string text = m.render(0);
  for (const char* line : {"tessera_kv_blocks_used{device=\"gpu0\",layers=\"window_128\"} 3\n",
                           "tessera_kv_blocks_free{device=\"gpu0\",layers=\"window_128\"} 7\n",
                           "tessera_kv_blocks_used{device=\"gpu0\",layers=\"full\"} 7\n",
                           "tessera_kv_blocks_used{device=\"cpu0\",layers=\"full\"} 7\n",
                           "tessera_kv_blocks_free{device=\"cpu0\",layers=\"full\"} 3\n",
                           "# TYPE tessera_kv_blocks_used gauge\n"})
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
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
