// `tessera serve` end to end (label daemon): the real binary on 127.0.0.1 with a fixture model,
// driven by a Beast HTTP client. Completions equal `tessera run`, concurrent clients get
// independent answers, bad input gets its status while the daemon goes on serving, a client that
// leaves mid-stream frees its KV blocks, a full queue answers 429, SIGTERM drains and exits 0.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "host/gguf/gguf.h"
#include "host/model/fixtures.h"
#include "host/server/api.h"
#include "host/server/chat_template.h"
#include "host/server/harmony.h"
#include "host/tokenizer/tokenizer.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A `tessera serve` child process (`env`: VAR=VALUE settings for it); killed (SIGKILL) at
// destruction if still running.
class Daemon {
 public:
  Daemon(const fs::path& dir, const std::string& args, const std::string& env = "") : dir_(dir) {
    const fs::path out = dir / "serve.out", err = dir / "serve.err";
    const std::string cmd = "exec " + (env.empty() ? "" : "env " + env + " ") +
                            std::string(TESSERA_BIN) + " serve --port 0 " + args;
    pid_ = fork();
    if (pid_ == 0) {
      const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(o, 1);
      dup2(e, 2);
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // The daemon prints its port, then loads the model (/health 503 until then).
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    const std::regex re("listening on http://[0-9.]+:([0-9]+)");
    while (port_ == 0 && std::chrono::steady_clock::now() < deadline && running()) {
      std::smatch m;
      const std::string text = slurp(out);
      if (std::regex_search(text, m, re)) port_ = std::stoi(m[1]);
      std::this_thread::sleep_for(20ms);
    }
  }
  ~Daemon() {
    if (pid_ > 0 && running()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }
  std::string log() const { return slurp(dir_ / "serve.err"); }
  bool running() {
    if (exited_) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      status_ = status;
      return false;
    }
    return true;
  }
  // Sends `sig` and waits (bounded) for the exit; returns the exit code, -1 when killed or hung.
  int signal_and_wait(int sig, std::chrono::seconds limit = 60s) {
    kill(pid_, sig);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (running() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(20ms);
    if (running()) return -1;
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : -1;
  }

 private:
  fs::path dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool exited_ = false;
  int status_ = 0;
};

struct Reply {
  int status = 0;
  std::string body;
  std::string retry_after, content_type;
};

// Blocking reads and writes on `stream` fail after 60 s (a sync Beast call ignores expires_after),
// so a daemon that never answers fails the test instead of hanging it.
void bound_in_time(beast::tcp_stream& stream) {
  timeval tv{60, 0};
  const int fd = stream.socket().native_handle();
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// One request on a fresh connection (loopback), bounded in time.
Reply request(int port, http::verb verb, const std::string& target, const std::string& body = "",
              const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  asio::io_context ioc;
  beast::tcp_stream stream(ioc);
  stream.expires_after(120s);
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), uint16_t(port)));
  bound_in_time(stream);
  http::request<http::string_body> req{verb, target, 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::content_type, "application/json");
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = body;
  req.prepare_payload();
  http::write(stream, req);
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 << 20);
  http::read(stream, buf, parser);
  const auto& res = parser.get();
  Reply r;
  r.status = res.result_int();
  r.body = res.body();
  r.retry_after = std::string(res[http::field::retry_after]);
  r.content_type = std::string(res[http::field::content_type]);
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_both, ec);
  return r;
}

Reply post(int port, const std::string& target, const json::object& body,
           const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  return request(port, http::verb::post, target, json::serialize(body), headers);
}

bool wait_healthy(int port, std::chrono::seconds limit = 180s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      if (request(port, http::verb::get, "/health").status == 200) return true;
    } catch (const std::exception&) {
    }
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

// The SSE events of a streamed body ("data: ..." lines), [DONE] included.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> events;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("data: ", 0) == 0) events.push_back(line.substr(6));
  return events;
}

// A metric's value in /metrics text (first line starting with `name`), -1 when absent.
double metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  return -1;
}

// Every series of `name` in /metrics text: its label set ("device=\"cpu0\",layers=\"full\"") to
// its value.
std::map<std::string, double> series(const std::string& text, const std::string& name) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + "{", 0) != 0) continue;
    const size_t close = line.find("} ");
    if (close == std::string::npos) continue;
    out[line.substr(name.size() + 1, close - name.size() - 1)] = std::stod(line.substr(close + 2));
  }
  return out;
}

// The sum of every series of `name` (-1 when there is none).
double total(const std::string& text, const std::string& name) {
  const auto s = series(text, name);
  if (s.empty()) return -1;
  double sum = 0;
  for (const auto& [labels, v] : s) sum += v;
  return sum;
}

struct Completion {
  std::string text;
  std::string reasoning;  // chat: reasoning_content
  std::string finish_reason;
  int64_t prompt_tokens = -1, completion_tokens = -1;
};

Completion completion_of(const std::string& body, bool chat) {
  const auto v = json::parse(body);
  Completion c;
  const auto& choice = v.at("choices").at(0);
  c.text = std::string(chat ? choice.at("message").at("content").as_string()
                            : choice.at("text").as_string());
  if (chat)
    if (const auto* r = choice.at("message").as_object().if_contains("reasoning_content"))
      c.reasoning = std::string(r->as_string());
  c.finish_reason = std::string(choice.at("finish_reason").as_string());
  c.prompt_tokens = v.at("usage").at("prompt_tokens").as_int64();
  c.completion_tokens = v.at("usage").at("completion_tokens").as_int64();
  return c;
}

// The concatenated deltas of a streamed completion; checks the chunk format on the way.
Completion stream_of(const std::string& body, bool chat) {
  const auto events = sse_events(body);
  Completion c;
  EXPECT_FALSE(events.empty());
  if (events.empty()) return c;
  EXPECT_EQ(events.back(), "[DONE]");
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const auto v = json::parse(events[i]);
    EXPECT_EQ(v.at("object").as_string(), chat ? "chat.completion.chunk" : "text_completion");
    const auto& choice = v.at("choices").at(0);
    if (chat) {
      const auto& delta = choice.at("delta").as_object();
      if (const auto* t = delta.if_contains("content")) c.text += std::string(t->as_string());
      if (const auto* t = delta.if_contains("reasoning_content"))
        c.reasoning += std::string(t->as_string());
    } else {
      c.text += std::string(choice.at("text").as_string());
    }
    if (!choice.at("finish_reason").is_null()) {
      c.finish_reason = std::string(choice.at("finish_reason").as_string());
      c.prompt_tokens = v.at("usage").at("prompt_tokens").as_int64();
      c.completion_tokens = v.at("usage").at("completion_tokens").as_int64();
    }
  }
  return c;
}

// `tessera run`'s text for the same prompt and settings (stdout without its final newline).
std::string run_text(const std::string& model, const std::string& prompt, int n,
                     const std::string& sampling) {
  const fs::path out = fs::path(model).parent_path() / "run.out";
  const std::string cmd = std::string(TESSERA_BIN) + " run -m " + model + " -p '" + prompt +
                          "' -n " + std::to_string(n) + " " + sampling + " > " + out.string() +
                          " 2>/dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::string text = slurp(out);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  // The daemon sends JSON strings: bytes that are not UTF-8 become U+FFFD.
  return server::sanitize_utf8(text);
}

class DaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::random_device rd;
    dir_ = new fs::path(fs::temp_directory_path() / ("tessera-daemon-" + std::to_string(rd())));
    fs::create_directories(*dir_);
    model::FixtureOptions o;
    o.kind = "qwen3moe";
    model_ = new std::string((*dir_ / "fixture.gguf").string());
    model::make_fixture(o).write(*model_);
    daemon_ = new Daemon(
        *dir_, "-m " + *model_ + " --parallel 16 --chat-template chatml --body-limit 65536");
  }
  static void TearDownTestSuite() {
    delete daemon_;
    std::error_code ec;
    fs::remove_all(*dir_, ec);
    delete dir_;
    delete model_;
  }
  void SetUp() override {
    ASSERT_GT(daemon_->port(), 0) << daemon_->log();
    ASSERT_TRUE(wait_healthy(daemon_->port())) << daemon_->log();
  }
  int port() const { return daemon_->port(); }

  static fs::path* dir_;
  static std::string* model_;
  static Daemon* daemon_;
};
fs::path* DaemonTest::dir_ = nullptr;
std::string* DaemonTest::model_ = nullptr;
Daemon* DaemonTest::daemon_ = nullptr;

TEST_F(DaemonTest, CompletionsEqualTesseraRun) {
  struct Setting {
    json::object body;
    std::string run_flags;
  };
  const Setting settings[] = {
      {{{"temperature", 0}}, "--temp 0"},
      {{{"temperature", 0.9}, {"top_k", 40}, {"top_p", 0.95}, {"seed", 7}},
       "--temp 0.9 --top-k 40 --top-p 0.95 --seed 7"},
  };
  const std::string prompt = "Once upon a time";
  for (const auto& s : settings) {
    const std::string expected = run_text(*model_, prompt, 12, s.run_flags);
    ASSERT_FALSE(expected.empty()) << s.run_flags;
    json::object body = s.body;
    body["prompt"] = prompt;
    body["max_tokens"] = 12;
    const Reply r = post(port(), "/v1/completions", body);
    ASSERT_EQ(r.status, 200) << r.body;
    const auto c = completion_of(r.body, false);
    EXPECT_EQ(c.text, expected) << s.run_flags;
    EXPECT_GT(c.prompt_tokens, 0);
    EXPECT_GE(c.completion_tokens, 1);
    EXPECT_LE(c.completion_tokens, 12);
    EXPECT_EQ(c.finish_reason, c.completion_tokens == 12 ? "length" : "stop");
    body["stream"] = true;
    const Reply sr = post(port(), "/v1/completions", body);
    ASSERT_EQ(sr.status, 200) << sr.body;
    EXPECT_EQ(sr.content_type, "text/event-stream");
    const auto sc = stream_of(sr.body, false);
    EXPECT_EQ(sc.text, expected) << s.run_flags;
    EXPECT_EQ(sc.completion_tokens, c.completion_tokens);
    EXPECT_EQ(sc.prompt_tokens, c.prompt_tokens);
    EXPECT_EQ(sc.finish_reason, c.finish_reason);
  }
}

TEST_F(DaemonTest, ChatModelsStopAndUsage) {
  const json::object chat{
      {"messages", json::array{json::object{{"role", "user"}, {"content", "Hello"}}}},
      {"max_tokens", 6},
      {"temperature", 0}};
  const Reply r = post(port(), "/v1/chat/completions", chat);
  ASSERT_EQ(r.status, 200) << r.body;
  const auto c = completion_of(r.body, true);
  json::object streamed = chat;
  streamed["stream"] = true;
  const Reply sr = post(port(), "/v1/chat/completions", streamed);
  ASSERT_EQ(sr.status, 200) << sr.body;
  const auto sc = stream_of(sr.body, true);
  EXPECT_EQ(sc.text, c.text);
  EXPECT_EQ(sc.completion_tokens, c.completion_tokens);

  const Reply models = request(port(), http::verb::get, "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(json::parse(models.body).at("data").at(0).at("id").as_string(), "fixture");

  // A stop string taken from the greedy text ends the answer just before it.
  const json::object plain{{"prompt", "Once upon a time"}, {"max_tokens", 12}, {"temperature", 0}};
  const auto full = completion_of(post(port(), "/v1/completions", plain).body, false);
  // The first two printable ASCII characters in a row after the first character.
  size_t at = 1;
  while (at + 1 < full.text.size() &&
         !(std::isprint(static_cast<unsigned char>(full.text[at])) &&
           std::isprint(static_cast<unsigned char>(full.text[at + 1]))))
    ++at;
  ASSERT_LT(at + 1, full.text.size()) << "no ASCII pair in " << full.text;
  const std::string probe = full.text.substr(at, 2);
  json::object stopped = plain;
  stopped["stop"] = json::array{"never appears", json::string(probe)};
  const auto s = completion_of(post(port(), "/v1/completions", stopped).body, false);
  EXPECT_EQ(s.text, full.text.substr(0, full.text.find(probe)));
  EXPECT_EQ(s.finish_reason, "stop");
  EXPECT_LT(s.completion_tokens, full.completion_tokens);
}

TEST_F(DaemonTest, SixteenConcurrentClientsGetIndependentAnswers) {
  std::vector<std::string> prompts;
  for (int i = 0; i < 16; ++i) prompts.push_back("request " + std::to_string(i) + " of many");
  std::vector<std::string> alone;
  for (const auto& p : prompts) {
    const Reply r =
        post(port(), "/v1/completions", {{"prompt", p}, {"max_tokens", 8}, {"temperature", 0}});
    ASSERT_EQ(r.status, 200) << r.body;
    alone.push_back(completion_of(r.body, false).text);
  }
  std::vector<std::future<Reply>> futures;
  for (int i = 0; i < 16; ++i)
    futures.push_back(std::async(std::launch::async, [&, i] {
      json::object body{{"prompt", prompts[size_t(i)]}, {"max_tokens", 8}, {"temperature", 0}};
      if (i % 2) body["stream"] = true;
      return post(port(), "/v1/completions", body);
    }));
  for (int i = 0; i < 16; ++i) {
    const Reply r = futures[size_t(i)].get();
    ASSERT_EQ(r.status, 200) << r.body;
    const auto c = i % 2 ? stream_of(r.body, false) : completion_of(r.body, false);
    EXPECT_EQ(c.text, alone[size_t(i)]) << "client " << i;
  }
}

TEST_F(DaemonTest, BadInputGetsItsStatusAndTheDaemonServesOn) {
  struct Case {
    http::verb verb;
    std::string target, body;
    int status;
    std::string param;  // expected error param ("" : none checked)
  };
  std::string many_words;
  for (int i = 0; i < 700; ++i) many_words += "word ";
  const std::vector<Case> cases = {
      {http::verb::post, "/v1/completions", "{not json", 400, ""},
      {http::verb::post, "/v1/completions", "[1,2,3]", 400, ""},
      {http::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":"ten"})", 400,
       "max_tokens"},
      {http::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":-3})", 400, "max_tokens"},
      {http::verb::post, "/v1/completions", R"({"prompt":"x","max_tokens":1000000000})", 400,
       "max_tokens"},
      {http::verb::post, "/v1/completions", R"({"prompt":"x","temperature":-1})", 400,
       "temperature"},
      {http::verb::post, "/v1/completions", R"({"prompt":"x","top_p":1.5})", 400, "top_p"},
      {http::verb::post, "/v1/completions", R"({"prompt":"x","n":3})", 400, "n"},
      {http::verb::post, "/v1/completions", R"({"prompt":""})", 400, "prompt"},
      {http::verb::post, "/v1/completions", R"({"prompt":[1,99999]})", 400, "prompt[1]"},
      {http::verb::post, "/v1/completions", R"({"prompt":")" + many_words + R"("})", 400, "prompt"},
      {http::verb::post, "/v1/completions", std::string("{\"prompt\":\"\xC3\x28\"}"), 400, ""},
      {http::verb::post, "/v1/completions", R"({"prompt":")" + std::string(70000, 'a') + R"("})",
       413, ""},
      {http::verb::post, "/v1/completions", R"({"prompt":"x","model":"gpt-9"})", 404, "model"},
      {http::verb::post, "/v1/chat/completions", R"({"messages":[{"role":"user"}]})", 400,
       "messages[0].content"},
      {http::verb::get, "/v1/completions", "", 405, ""},
      {http::verb::post, "/health", "", 405, ""},
      {http::verb::get, "/v2/everything", "", 404, ""},
  };
  for (const auto& c : cases) {
    const Reply r = request(port(), c.verb, c.target, c.body);
    EXPECT_EQ(r.status, c.status) << c.target << " " << c.body.substr(0, 80) << " -> " << r.body;
    // An OpenAI error object naming the field.
    boost::system::error_code ec;
    const auto v = json::parse(r.body, ec);
    ASSERT_FALSE(ec) << r.body;
    ASSERT_TRUE(v.is_object() && v.as_object().contains("error")) << r.body;
    EXPECT_TRUE(v.at("error").at("message").is_string());
    if (!c.param.empty()) {
      EXPECT_EQ(v.at("error").at("param"), json::value(c.param)) << r.body;
    }
  }
  // Unknown fields are ignored; the daemon still serves.
  const Reply ok = post(port(), "/v1/completions",
                        {{"prompt", "still here"}, {"max_tokens", 3}, {"frobnicate", true}});
  EXPECT_EQ(ok.status, 200) << ok.body;
  const std::string m = request(port(), http::verb::get, "/metrics").body;
  EXPECT_GE(metric(m, "tessera_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"), 9)
      << m;
}

// Opens a streamed completion, reads `events` SSE events, and returns the open socket.
std::unique_ptr<beast::tcp_stream> open_stream(asio::io_context& ioc, int port,
                                               const json::object& body, int events) {
  auto stream = std::make_unique<beast::tcp_stream>(ioc);
  stream->expires_after(120s);
  stream->connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), uint16_t(port)));
  bound_in_time(*stream);
  http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
  req.set(http::field::host, "127.0.0.1");
  req.body() = json::serialize(body);
  req.prepare_payload();
  http::write(*stream, req);
  std::string seen;
  char buf[4096];
  size_t count = 0;
  while (count < size_t(events)) {
    const size_t n = stream->read_some(asio::buffer(buf));
    seen.append(buf, n);
    count = 0;
    for (size_t at = seen.find("data: "); at != std::string::npos; at = seen.find("data: ", at + 1))
      ++count;
  }
  return stream;
}

TEST_F(DaemonTest, ClientThatLeavesMidStreamFreesItsKvBlocks) {
  asio::io_context ioc;
  auto stream = open_stream(
      ioc, port(),
      {{"prompt", "a long story"}, {"max_tokens", 400}, {"temperature", 0}, {"stream", true}}, 2);
  const std::string during = request(port(), http::verb::get, "/metrics").body;
  // KV blocks per device: the fixture's one layer group on the one device that holds the KV.
  const auto used = series(during, "tessera_kv_blocks_used");
  ASSERT_EQ(used.size(), 1u) << during;
  const std::string labels = used.begin()->first;
  EXPECT_TRUE(std::regex_match(labels, std::regex(R"(device="[a-z]+[0-9]+",layers="full")")))
      << labels;
  EXPECT_GT(used.begin()->second, 0) << during;
  const auto free_blocks = series(during, "tessera_kv_blocks_free");
  ASSERT_EQ(free_blocks.count(labels), 1u) << during;
  EXPECT_EQ(metric(during, "tessera_running_sequences"), 1) << during;
  stream->socket().close();
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  std::string after;
  while (std::chrono::steady_clock::now() < deadline) {
    after = request(port(), http::verb::get, "/metrics").body;
    if (total(after, "tessera_kv_blocks_used") == 0 &&
        metric(after, "tessera_running_sequences") == 0)
      break;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(total(after, "tessera_kv_blocks_used"), 0) << after;
  // Freed blocks are free again: used + free is the same before and after.
  EXPECT_EQ(series(after, "tessera_kv_blocks_free").at(labels),
            used.begin()->second + free_blocks.at(labels))
      << after;
  EXPECT_EQ(metric(after, "tessera_running_sequences"), 0) << after;
  EXPECT_GE(metric(after, "tessera_requests_total{endpoint=\"/v1/completions\",status=\"499\"}"), 1)
      << after;
  // Far fewer than 400 tokens were generated for it.
  EXPECT_LT(metric(after, "tessera_generated_tokens_total"), 2000);
}

// Its own daemon: one sequence at a time, no queue, an API key, JSON logs, all from the config
// file's batching and server sections (a flag overrides the file's model name); SIGTERM while a
// request runs.
TEST(DaemonLimits, ApiKeyQueueFullAndSigtermDrain) {
  std::random_device rd;
  const fs::path dir = fs::temp_directory_path() / ("tessera-daemon-" + std::to_string(rd()));
  fs::create_directories(dir);
  model::FixtureOptions o;
  o.kind = "llama";
  const std::string model = (dir / "fixture.gguf").string();
  model::make_fixture(o).write(model);
  const fs::path config = dir / "serve.yaml";
  std::ofstream(config) << "batching:\n  max_sequences: 1\nserver:\n  max_queue: 0\n"
                           "  api_key: sekret\n  log_format: json\n  model_name: from-file\n";
  // A server key the config does not know, or a bad value, stops the daemon naming the key.
  const fs::path bad = dir / "bad.yaml";
  for (const char* yaml : {"server:\n  prot: 8080\n", "server:\n  grace: -1\n"}) {
    std::ofstream(bad) << yaml;
    const std::string cmd = std::string(TESSERA_BIN) + " serve --port 0 -m " + model +
                            " --config " + bad.string() + " > " + (dir / "bad.out").string() +
                            " 2>&1";
    EXPECT_NE(std::system(cmd.c_str()), 0) << yaml;
    const std::string out = slurp(dir / "bad.out");
    EXPECT_NE(out.find(std::string(yaml).find("prot") != std::string::npos ? "server.prot"
                                                                           : "server.grace"),
              std::string::npos)
        << out;
  }
  {
    Daemon d(dir, "-m " + model + " --config " + config.string() + " --model-name from-flag");
    ASSERT_GT(d.port(), 0) << d.log();
    ASSERT_TRUE(wait_healthy(d.port())) << d.log();
    const json::object body{{"prompt", "hello"}, {"max_tokens", 2}};
    EXPECT_EQ(post(d.port(), "/v1/completions", body).status, 401);
    EXPECT_EQ(post(d.port(), "/v1/completions", body, {{"Authorization", "Bearer nope"}}).status,
              401);
    EXPECT_EQ(request(d.port(), http::verb::get, "/v1/models").status, 401);
    const std::vector<std::pair<std::string, std::string>> auth = {
        {"Authorization", "Bearer sekret"}};
    EXPECT_EQ(post(d.port(), "/v1/completions", body, auth).status, 200);
    const Reply models = request(d.port(), http::verb::get, "/v1/models", "", auth);
    ASSERT_EQ(models.status, 200) << models.body;
    EXPECT_EQ(json::parse(models.body).at("data").at(0).at("id").as_string(), "from-flag");

    // The finished request above leaves the admission count once the server has finished writing
    // its response, which can be just after the client has read it: wait for the slot to be free.
    const auto idle_by = std::chrono::steady_clock::now() + 30s;
    while (metric(request(d.port(), http::verb::get, "/metrics", "", auth).body,
                  "tessera_requests_in_flight") != 0 &&
           std::chrono::steady_clock::now() < idle_by)
      std::this_thread::sleep_for(10ms);

    // One long stream holds the only slot: the next request gets 429 with Retry-After.
    asio::io_context ioc;
    auto stream = std::make_unique<beast::tcp_stream>(ioc);
    stream->expires_after(120s);
    stream->connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), uint16_t(d.port())));
    bound_in_time(*stream);
    http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::authorization, "Bearer sekret");
    req.body() = json::serialize(json::object{{"prompt", "x"},
                                              {"max_tokens", 400},
                                              {"temperature", 0},
                                              {"ignore_eos", true},
                                              {"stream", true}});
    req.prepare_payload();
    http::write(*stream, req);
    char buf[256];
    stream->read_some(asio::buffer(buf));  // the headers: the request is running
    const Reply busy = post(d.port(), "/v1/completions", body, auth);
    EXPECT_EQ(busy.status, 429) << busy.body;
    EXPECT_EQ(busy.retry_after, "1");

    // A keep-alive connection that asks /health: 200 now, 503 once draining.
    asio::io_context hioc;
    beast::tcp_stream health(hioc);
    health.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), uint16_t(d.port())));
    bound_in_time(health);
    auto ask_health = [&] {
      http::request<http::empty_body> hreq{http::verb::get, "/health", 11};
      hreq.set(http::field::host, "127.0.0.1");
      hreq.keep_alive(true);
      beast::error_code hec;
      http::write(health, hreq, hec);
      beast::flat_buffer hbuf;
      http::response<http::string_body> hres;
      if (!hec) http::read(health, hbuf, hres, hec);
      return hec ? -1 : hres.result_int();
    };
    EXPECT_EQ(ask_health(), 200);

    // SIGTERM: the running stream finishes (ends with [DONE]), then the daemon exits 0.
    std::promise<int> code;
    std::thread t([&] { code.set_value(d.signal_and_wait(SIGTERM)); });
    int draining = 200;
    for (auto until = std::chrono::steady_clock::now() + 10s;
         draining == 200 && std::chrono::steady_clock::now() < until;
         std::this_thread::sleep_for(5ms))
      draining = ask_health();
    EXPECT_EQ(draining, 503) << "while the stream still runs after SIGTERM";
    std::string rest;
    beast::error_code ec;
    for (;;) {
      const size_t n = stream->read_some(asio::buffer(buf), ec);
      rest.append(buf, n);
      if (ec) break;
    }
    t.join();
    EXPECT_NE(rest.find("data: [DONE]"), std::string::npos) << rest.substr(0, 300);
    EXPECT_EQ(code.get_future().get(), 0) << d.log();
    // JSON logs: one object per line, request lines carry a request id.
    const std::string log = d.log();
    std::istringstream in(log);
    std::string line;
    int with_id = 0;
    while (std::getline(in, line)) {
      boost::system::error_code jec;
      const auto v = json::parse(line, jec);
      EXPECT_FALSE(jec) << line;
      if (!jec && v.is_object() && v.as_object().contains("request_id")) ++with_id;
    }
    EXPECT_GE(with_id, 4) << log;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// gpt-oss's harmony chat end to end: a gpt-oss fixture with the harmony tokens and a harmony
// tokenizer.chat_template (recognised, no --chat-template), its replies split by channel. The
// expected answer comes from `tessera run` on the same prompt tokens and seed: its generated ids,
// rendered with special tokens and read by the harmony parser (tested on its own in
// server_unit_test) as the daemon must.
TEST(DaemonHarmony, ChatRepliesSplitByChannelAsTesseraRunWritesThem) {
  std::random_device rd;
  const fs::path dir = fs::temp_directory_path() / ("tessera-daemon-" + std::to_string(rd()));
  fs::create_directories(dir);
  model::FixtureOptions o;
  o.kind = "gpt-oss";
  o.harmony = true;
  const std::string model = (dir / "fixture.gguf").string();
  model::make_fixture(o).write(model);
  const auto tok = tokenizer::Tokenizer::from_gguf(gguf::GgufFile::open(model));
  {
    Daemon d(dir, "-m " + model);
    ASSERT_GT(d.port(), 0) << d.log();
    ASSERT_TRUE(wait_healthy(d.port())) << d.log();
    const std::vector<server::ChatMessage> messages = {{"system", "Be brief."},
                                                       {"user", "Hello there"}};
    const std::string prompt =
        server::apply_chat_template(server::chat_template_by_name("harmony"), messages);
    const auto prompt_ids = tok.encode(prompt, false, true);  // `tessera run --tokens` adds BOS
    std::string id_list;
    for (const int32_t id : prompt_ids)
      id_list += (id_list.empty() ? "" : ",") + std::to_string(id);
    int opened = 0;
    for (int seed = 0; seed < 4; ++seed) {
      const int n = 60;
      const fs::path out = dir / "run.out";
      const std::string cmd = std::string(TESSERA_BIN) + " run -m " + model + " --tokens " +
                              id_list + " -n " + std::to_string(n) + " --temp 1 --seed " +
                              std::to_string(seed) + " --ids > " + out.string() + " 2>/dev/null";
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
      std::istringstream ids(slurp(out));
      std::string raw;  // the reply as the model wrote it, special tokens rendered
      server::HarmonyParser parser;
      server::HarmonyDelta expected;
      int generated = 0;
      bool eog = false;
      for (int32_t id; ids >> id;) {
        ++generated;
        if (tok.is_eog(id)) {
          eog = true;
          break;
        }
        raw += tok.token_to_piece(id, true);
        const auto piece = parser.push(tok.token_to_piece(id, true));
        expected.reasoning += piece.reasoning;
        expected.content += piece.content;
      }
      const auto rest = parser.finish();
      expected.reasoning += rest.reasoning;
      expected.content += rest.content;
      expected.reasoning = server::sanitize_utf8(expected.reasoning);
      expected.content = server::sanitize_utf8(expected.content);

      json::array ms;
      for (const auto& m : messages)
        ms.push_back(json::object{{"role", m.role}, {"content", m.content}});
      json::object body{{"messages", ms}, {"max_tokens", n}, {"temperature", 1}, {"seed", seed}};
      const Reply r = post(d.port(), "/v1/chat/completions", body);
      ASSERT_EQ(r.status, 200) << r.body;
      const auto c = completion_of(r.body, true);
      EXPECT_EQ(c.prompt_tokens, int64_t(prompt_ids.size()) + 1) << "seed " << seed;
      EXPECT_EQ(c.completion_tokens, generated) << "seed " << seed;
      EXPECT_EQ(c.text, expected.content) << "seed " << seed << ", raw: " << raw;
      EXPECT_EQ(c.reasoning, expected.reasoning) << "seed " << seed << ", raw: " << raw;
      EXPECT_EQ(c.finish_reason, eog ? "stop" : "length") << "seed " << seed;
      body["stream"] = true;
      const Reply sr = post(d.port(), "/v1/chat/completions", body);
      ASSERT_EQ(sr.status, 200) << sr.body;
      const auto sc = stream_of(sr.body, true);
      EXPECT_EQ(sc.text, c.text) << "seed " << seed;
      EXPECT_EQ(sc.reasoning, c.reasoning) << "seed " << seed;
      EXPECT_EQ(sc.completion_tokens, c.completion_tokens) << "seed " << seed;
      // Once a message opened, no marker reaches the reply.
      if (raw.find("<|message|>") != std::string::npos) {
        ++opened;
        EXPECT_EQ(c.text.find("<|message|>"), std::string::npos) << c.text;
        EXPECT_EQ(c.text.find("<|channel|>"), std::string::npos) << c.text;
      }
    }
    // The fixture writes markers often enough that the parser had messages to open.
    EXPECT_GT(opened, 0);
    // `tessera run --chat` renders a user message with the model's template as the daemon does and
    // writes the reply's final channel to stdout.
    for (int seed = 0; seed < 2; ++seed) {
      const fs::path out = dir / "chat.out";
      const std::string cmd = std::string(TESSERA_BIN) + " run -m " + model +
                              " --chat -p 'Hello there' -n 60 --temp 1 --seed " +
                              std::to_string(seed) + " > " + out.string() + " 2>/dev/null";
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
      std::string run_reply = slurp(out);
      ASSERT_FALSE(run_reply.empty());
      run_reply.pop_back();  // run's final newline
      json::object body{
          {"messages", json::array{json::object{{"role", "user"}, {"content", "Hello there"}}}},
          {"max_tokens", 60},
          {"temperature", 1},
          {"seed", seed}};
      const Reply r = post(d.port(), "/v1/chat/completions", body);
      ASSERT_EQ(r.status, 200) << r.body;
      EXPECT_EQ(completion_of(r.body, true).text, server::sanitize_utf8(run_reply))
          << "seed " << seed;
    }
    // gpt-oss's two layer groups (window layers and full ones) each have their KV series.
    const std::string m = request(d.port(), http::verb::get, "/metrics").body;
    int window = 0, full = 0;
    for (const auto& [labels, v] : series(m, "tessera_kv_blocks_free")) {
      window += labels.find("layers=\"window_8\"") != std::string::npos;
      full += labels.find("layers=\"full\"") != std::string::npos;
      EXPECT_NE(labels.find("device=\""), std::string::npos) << labels;
    }
    EXPECT_EQ(window, 1) << m;
    EXPECT_EQ(full, 1) << m;
    // A reasoning_effort the template does not know is refused naming the field.
    json::object bad{{"messages", json::array{json::object{{"role", "user"}, {"content", "x"}}}},
                     {"reasoning_effort", "extreme"}};
    const Reply br = post(d.port(), "/v1/chat/completions", bad);
    EXPECT_EQ(br.status, 400) << br.body;
    EXPECT_NE(br.body.find("reasoning_effort"), std::string::npos) << br.body;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// Its own daemon, its load held back by the test hook: /health and generation answer 503 while
// the model loads; then a request running past --request-timeout gets 504 and is cancelled.
TEST(DaemonLifecycle, LoadingAnswers503AndTimeoutAnswers504) {
  std::random_device rd;
  const fs::path dir = fs::temp_directory_path() / ("tessera-daemon-" + std::to_string(rd()));
  fs::create_directories(dir);
  model::FixtureOptions o;
  o.kind = "llama";
  const std::string model = (dir / "fixture.gguf").string();
  model::make_fixture(o).write(model);
  {
    Daemon d(dir, "-m " + model + " --request-timeout 0.001", "TESSERA_SERVE_LOAD_DELAY_MS=4000");
    ASSERT_GT(d.port(), 0) << d.log();
    const Reply loading = request(d.port(), http::verb::get, "/health");
    EXPECT_EQ(loading.status, 503) << loading.body;
    EXPECT_NE(loading.body.find("loading"), std::string::npos) << loading.body;
    const json::object small{{"prompt", "hello"}, {"max_tokens", 2}};
    const Reply early = post(d.port(), "/v1/completions", small);
    EXPECT_EQ(early.status, 503) << early.body;
    EXPECT_EQ(early.retry_after, "1");
    ASSERT_TRUE(wait_healthy(d.port())) << d.log();
    // Ready only after the warm-up's steps (kernels' first launches), which left nothing behind
    // (and are never cut by the request timeout).
    const std::string ready = request(d.port(), http::verb::get, "/metrics").body;
    EXPECT_GE(metric(ready, "tessera_engine_steps_total"), 4) << ready;
    EXPECT_EQ(metric(ready, "tessera_running_sequences"), 0) << ready;
    EXPECT_EQ(total(ready, "tessera_kv_blocks_used"), 0) << ready;
    EXPECT_EQ(metric(ready, "tessera_generated_tokens_total"), 0) << ready;

    // 300 tokens cannot come within a millisecond: the request is cut at the timeout.
    const Reply slow =
        post(d.port(), "/v1/completions",
             {{"prompt", "hello"}, {"max_tokens", 300}, {"ignore_eos", true}, {"temperature", 0}});
    EXPECT_EQ(slow.status, 504) << slow.body;
    boost::system::error_code ec;
    const auto err = json::parse(slow.body, ec);
    ASSERT_FALSE(ec) << slow.body;
    EXPECT_EQ(err.at("error").at("code"), json::value("timeout")) << slow.body;
    // Cancelled: its sequence leaves and its blocks are freed.
    std::string m;
    for (auto until = std::chrono::steady_clock::now() + 20s;
         std::chrono::steady_clock::now() < until; std::this_thread::sleep_for(20ms)) {
      m = request(d.port(), http::verb::get, "/metrics").body;
      if (metric(m, "tessera_running_sequences") == 0 && total(m, "tessera_kv_blocks_used") == 0)
        break;
    }
    EXPECT_EQ(metric(m, "tessera_running_sequences"), 0) << m;
    EXPECT_EQ(total(m, "tessera_kv_blocks_used"), 0) << m;
    EXPECT_LT(metric(m, "tessera_generated_tokens_total"), 300) << m;
    EXPECT_EQ(metric(m, "tessera_requests_total{endpoint=\"/v1/completions\",status=\"504\"}"), 1)
        << m;
    EXPECT_EQ(metric(m, "tessera_requests_total{endpoint=\"/v1/completions\",status=\"503\"}"), 1)
        << m;
    EXPECT_GE(metric(m, "tessera_requests_total{endpoint=\"/health\",status=\"503\"}"), 1) << m;
    EXPECT_EQ(d.signal_and_wait(SIGTERM), 0) << d.log();
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

}  // namespace
}  // namespace tessera
