// The daemon: Beast sessions as C++20 coroutines, each on its own strand; one engine thread.
#include "host/server/server.h"

#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "host/server/api.h"
#include "host/server/harmony.h"
#include "host/server/log.h"
#include "host/server/metrics.h"

namespace tessera::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using asio::awaitable;
using asio::use_awaitable;
constexpr auto kTuple = asio::as_tuple(use_awaitable);
using HttpRequest = http::request<http::string_body>;

namespace {

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// What the engine's limits allow; read once the model is loaded.
struct Limits {
  int max_context = 0;
  int64_t kv_capacity_tokens = 0;
  int max_sequences = 0;
  uint32_t n_vocab = 0;
};

// One engine event for a request, stamped when the engine thread produced it.
struct Event {
  int32_t token = -1;
  engine::FinishReason finish = engine::FinishReason::kNone;
  std::string error;
  Clock::time_point at;
};

// A generation request shared by its session (on the session's strand) and the engine's
// callback (on the engine thread): events go through the mutex; the timer, on the strand, is
// cancelled to wake the session.
struct Job {
  explicit Job(const asio::any_io_executor& ex) : timer(ex) {}
  std::mutex mutex;
  std::deque<Event> events;
  asio::steady_timer timer;
  bool disconnected = false;  // strand only
  engine::RequestId id = 0;
};

// Runs a few throw-away requests through a fresh engine before the daemon reports ready, so that
// no client's step waits on a kernel's first launch: PoCL builds a kernel's work-group function at
// its first launch of a work-group size (100+ ms each on a CPU; loaded from its kernel cache when
// an earlier process built it), which would stall the first requests' steps. The shapes cover the
// kernel variants the steps choose by size: a short prompt alone (prefill, then one sequence's
// decode), batches of 3 and 12 sequences (token tiles 4 and 8), then up to 17 sequences with a
// 20-token prompt among them (MoE pairs grouped by expert, from 16 tokens). Its steps count in
// the engine's counters; its sequences are freed when it ends.
void warm_up(engine::Engine& e) {
  const auto& o = e.model().options();
  const int32_t n_vocab = int32_t(e.model().spec().hp.n_vocab);
  const int longest = std::max(1, std::min({20, o.max_context - 1, o.max_batch_tokens / 2}));
  auto request = [&](int n) {
    engine::Request r;
    for (int i = 0; i < n; ++i) r.prompt.push_back(int32_t((7 * i + 1) % n_vocab));
    r.max_tokens = 2;
    return r;
  };
  const std::pair<int, int> phases[] = {{1, std::min(5, longest)}, {3, 1}, {12, 1}, {17, longest}};
  int done = 0;
  for (const auto& [sequences, first_prompt] : phases) {
    const int n = std::min(sequences, o.max_sequences);
    if (n <= done) continue;
    done = n;
    e.add_request(request(first_prompt));
    for (int i = 1; i < n; ++i) e.add_request(request(1));
    e.run_until_idle();
  }
}

}  // namespace

// --- the engine thread -------------------------------------------------------------------------

class EngineWorker {
 public:
  EngineWorker(EngineFactory factory, Metrics& metrics)
      : factory_(std::move(factory)), metrics_(metrics) {}
  ~EngineWorker() { stop_and_join(); }

  // `on_load`: called on the engine thread once loading ended (empty error: loaded).
  void start(std::function<void(const std::string& error)> on_load) {
    on_load_ = std::move(on_load);
    thread_ = std::thread([this] { main(); });
  }
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  const Limits& limits() const { return limits_; }  // once ready()

  engine::RequestId submit(engine::Request request) {
    const auto id = engine_->add_request(std::move(request));
    kick();
    return id;
  }
  void abort(engine::RequestId id) {
    engine_->abort_request(id);
    kick();
  }
  // Steps until the engine is idle, then destroys it (on its thread) and returns.
  void stop_and_join() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void kick() {
    {
      std::lock_guard lock(mutex_);
      kicked_ = true;
    }
    cv_.notify_all();
  }

  void publish(engine::Engine& e, const engine::EngineSetup& setup) {
    EngineGauges g;
    g.waiting = e.n_waiting();
    g.running = e.n_running();
    // Per device and layer group: a block id of a group holds a slot in the pools of each of
    // the group's layers, so every device holding one of those layers uses that many blocks.
    const auto& cache = e.model().kv_cache();
    for (int32_t grp = 0; grp < cache.n_groups(); ++grp) {
      const auto& b = cache.blocks(grp);
      const std::string layers = b.window() > 0 ? "window_" + std::to_string(b.window()) : "full";
      std::vector<std::string> devices;  // in layer order
      for (int32_t l = 0; l < cache.config().n_layer; ++l) {
        if (cache.group_of(l) != grp) continue;
        const std::string& id = cache.device(l).id();
        if (std::find(devices.begin(), devices.end(), id) == devices.end()) devices.push_back(id);
      }
      for (const auto& d : devices) g.kv.push_back({d, layers, b.blocks_used(), b.n_blocks()});
    }
    const auto& st = e.model().stats();
    const auto& plan = setup.plan();
    for (size_t d = 0; d < plan.devices.size(); ++d)
      g.devices.push_back(
          {plan.devices[d].id, d < st.device_seconds.size() ? st.device_seconds[d] : 0.0});
    g.steps = e.counters().steps;
    g.step_seconds = e.counters().prefill_seconds + e.counters().decode_seconds;
    metrics_.set_engine(std::move(g));
  }

  void main() {
    std::optional<engine::EngineSetup> setup;
    try {
      setup.emplace(factory_());
    } catch (const std::exception& e) {
      on_load_(std::string(e.what()));
      return;
    }
    engine::Engine& e = *setup->engine;
    try {
      const auto t0 = Clock::now();
      warm_up(e);
      log_event(spdlog::level::info, "warmed up",
                {{"steps", int64_t(e.counters().steps)}, {"ms", seconds_since(t0) * 1e3}});
    } catch (const std::exception& ex) {
      log_event(spdlog::level::warn, "warm-up failed", {{"error", ex.what()}});
    }
    const auto& o = e.model().options();
    const auto& blocks = e.model().kv_cache().blocks();
    limits_.max_context = o.max_context;
    limits_.kv_capacity_tokens = int64_t(blocks.n_blocks()) * blocks.block_size();
    limits_.max_sequences = o.max_sequences;
    limits_.n_vocab = e.model().spec().hp.n_vocab;
    engine_ = &e;
    publish(e, *setup);
    ready_.store(true, std::memory_order_release);
    on_load_({});
    for (;;) {
      if (e.idle()) {
        std::unique_lock lock(mutex_);
        if (stop_) break;
        cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return kicked_ || stop_; });
        kicked_ = false;
        continue;
      }
      int n = 0;
      try {
        n = e.step();
      } catch (const std::exception& ex) {
        log_event(spdlog::level::err, "engine step failed", {{"error", ex.what()}});
      }
      publish(e, *setup);
      // Nothing could run (a request waits for KV blocks held by none running): do not spin.
      if (n == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    publish(e, *setup);
    engine_ = nullptr;
    setup.reset();  // the devices are released on the thread that owned them
  }

  EngineFactory factory_;
  Metrics& metrics_;
  std::function<void(const std::string&)> on_load_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool kicked_ = false, stop_ = false;
  std::atomic<bool> ready_{false};
  Limits limits_;
  engine::Engine* engine_ = nullptr;
};

// --- the server --------------------------------------------------------------------------------

struct Server::Impl {
  Impl(ServerOptions o, const tokenizer::Tokenizer& t, std::optional<ChatTemplate> c,
       std::string problem, EngineFactory factory)
      : options(std::move(o)),
        tok(t),
        chat(std::move(c)),
        chat_problem(std::move(problem)),
        worker(std::move(factory), metrics),
        acceptor(ioc),
        signals(ioc, SIGINT, SIGTERM) {}

  ServerOptions options;
  const tokenizer::Tokenizer& tok;
  std::optional<ChatTemplate> chat;
  std::string chat_problem;
  Metrics metrics;
  EngineWorker worker;
  std::atomic<bool> draining{false};
  std::atomic<bool> load_failed{false};
  std::atomic<int> in_flight{0};
  std::atomic<uint64_t> next_request{1};
  std::mutex jobs_mutex;
  std::set<std::shared_ptr<Job>> jobs;  // generation requests the engine holds
  // Declared after what sessions use: destroying the io_context destroys suspended sessions,
  // whose clean-up still reaches jobs and in_flight.
  asio::io_context ioc;
  tcp::acceptor acceptor;
  asio::signal_set signals;

  awaitable<void> accept_loop();
  awaitable<void> session(tcp::socket socket);
  awaitable<bool> handle(beast::tcp_stream& stream, HttpRequest& req);
  awaitable<bool> generate(beast::tcp_stream& stream, HttpRequest& req, Endpoint endpoint,
                           std::string rid, Clock::time_point received);
  awaitable<void> drain();
  void begin_drain(const char* why);

  // Writes a whole response and counts it in the metrics. Arguments by value: an awaitable
  // starts later than the call, so references to the caller's temporaries would dangle.
  awaitable<bool> respond(beast::tcp_stream& stream, const HttpRequest& req, http::status status,
                          std::string endpoint, std::string body, std::string rid,
                          std::string content_type,
                          std::vector<std::pair<std::string, std::string>> headers) {
    http::response<http::string_body> res{status, req.version()};
    res.set(http::field::server, "tessera");
    res.set(http::field::content_type, content_type);
    res.set("X-Request-Id", rid);
    for (const auto& [k, v] : headers) res.set(k, v);
    res.keep_alive(req.keep_alive() && !draining);
    res.body() = std::move(body);
    res.prepare_payload();
    metrics.count_request(endpoint, int(status));
    stream.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(options.idle_timeout_s)));
    auto [ec, n] = co_await http::async_write(stream, res, kTuple);
    (void)n;
    co_return !ec && res.keep_alive();
  }

  // An OpenAI error object with the error's status; logged with the request id.
  awaitable<bool> respond_error(beast::tcp_stream& stream, const HttpRequest& req, ApiError e,
                                std::string endpoint, std::string rid,
                                std::vector<std::pair<std::string, std::string>> headers) {
    log_event(spdlog::level::info, "request refused",
              {{"request_id", rid},
               {"method", std::string(req.method_string())},
               {"path", std::string(req.target())},
               {"status", e.status},
               {"error", e.what()}});
    std::string body = error_body(e);
    std::string type = "application/json";
    co_return co_await respond(stream, req, http::status(e.status), std::move(endpoint),
                               std::move(body), std::move(rid), std::move(type),
                               std::move(headers));
  }
};

Server::Server(ServerOptions options, const tokenizer::Tokenizer& tokenizer,
               std::optional<ChatTemplate> chat, std::string chat_problem, EngineFactory factory)
    : impl_(std::make_unique<Impl>(std::move(options), tokenizer, std::move(chat),
                                   std::move(chat_problem), std::move(factory))) {}

Server::~Server() = default;

void Server::listen() {
  auto& o = impl_->options;
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(o.host, ec);
  if (ec) throw TesseraError("--host '" + o.host + "' is not an IP address: " + ec.message());
  const tcp::endpoint ep(address, o.port);
  auto& a = impl_->acceptor;
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw TesseraError("cannot listen on " + o.host + ":" + std::to_string(o.port) + ": " +
                       ec.message());
}

uint16_t Server::port() const {
  return impl_->acceptor.local_endpoint().port();
}

void Server::stop() {
  asio::post(impl_->ioc, [impl = impl_.get()] { impl->begin_drain("stop requested"); });
}

int Server::run() {
  Impl& s = *impl_;
  s.worker.start([&s](const std::string& error) {
    if (error.empty()) {
      log_event(spdlog::level::info, "model loaded", {{"model", s.options.model_name}});
      return;
    }
    log_event(spdlog::level::err, "model failed to load", {{"error", error}});
    s.load_failed = true;
    asio::post(s.ioc, [&s] { s.begin_drain("the model failed to load"); });
  });
  s.signals.async_wait([&s](const boost::system::error_code& ec, int sig) {
    if (!ec) s.begin_drain(sig == SIGINT ? "SIGINT" : "SIGTERM");
  });
  asio::co_spawn(s.ioc, s.accept_loop(), asio::detached);
  std::vector<std::thread> threads;
  for (int i = 1; i < std::max(1, s.options.io_threads); ++i)
    threads.emplace_back([&s] { s.ioc.run(); });
  s.ioc.run();
  for (auto& t : threads) t.join();
  s.worker.stop_and_join();
  log_event(spdlog::level::info, "stopped", {});
  return s.load_failed ? 1 : 0;
}

void Server::Impl::begin_drain(const char* why) {
  if (draining.exchange(true)) return;
  log_event(spdlog::level::info, "draining", {{"reason", why}, {"in_flight", in_flight.load()}});
  boost::system::error_code ec;
  acceptor.close(ec);
  signals.cancel(ec);
  asio::co_spawn(ioc, drain(), asio::detached);
}

awaitable<void> Server::Impl::drain() {
  asio::steady_timer t(ioc);
  const auto start = Clock::now();
  bool cancelled = false;
  while (in_flight > 0) {
    if (!cancelled && seconds_since(start) > options.grace_s) {
      cancelled = true;
      std::lock_guard lock(jobs_mutex);
      log_event(spdlog::level::warn, "grace period over, cancelling requests",
                {{"requests", int(jobs.size())}});
      for (const auto& j : jobs) worker.abort(j->id);
    }
    if (cancelled && seconds_since(start) > options.grace_s + 10) break;
    t.expires_after(std::chrono::milliseconds(20));
    co_await t.async_wait(kTuple);
  }
  ioc.stop();
}

awaitable<void> Server::Impl::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(ioc), kTuple);
    if (ec) {
      if (!acceptor.is_open()) co_return;
      log_event(spdlog::level::warn, "accept failed", {{"error", ec.message()}});
      asio::steady_timer t(ioc);
      t.expires_after(std::chrono::milliseconds(50));  // e.g. out of file descriptors
      co_await t.async_wait(kTuple);
      continue;
    }
    // Tokens go out as they come: no Nagle delay on small SSE writes.
    socket.set_option(tcp::no_delay(true), ec);
    auto ex = socket.get_executor();
    asio::co_spawn(ex, session(std::move(socket)), asio::detached);
  }
}

awaitable<void> Server::Impl::session(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  const auto idle = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(options.idle_timeout_s));
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(options.body_limit);
    parser.header_limit(64 * 1024);
    stream.expires_after(idle);
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, kTuple);
    (void)n;
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == beast::error::timeout ||
        ec == asio::error::connection_reset || ec == asio::error::operation_aborted)
      break;
    if (ec) {
      const std::string rid = "req-" + std::to_string(next_request++);
      HttpRequest req;
      req.version(11);
      req.keep_alive(false);
      const bool too_big = ec == http::error::body_limit || ec == http::error::header_limit;
      const ApiError e =
          too_big ? ApiError(413, ec == http::error::body_limit
                                      ? "the request body is over the limit of " +
                                            std::to_string(options.body_limit) + " bytes"
                                      : "the request headers are over the limit of 65536 bytes")
                  : ApiError(400, "malformed HTTP request: " + ec.message());
      std::string other = "other";
      co_await respond_error(stream, req, e, other, rid, {});
      // Read what the client still sends (briefly) so that closing does not reset the
      // connection before it has read the answer.
      stream.socket().shutdown(tcp::socket::shutdown_send, ec);
      stream.expires_after(std::chrono::seconds(2));
      std::vector<char> sink(65536);
      for (size_t total = 0; total < (64u << 20);) {
        auto [rec, got] = co_await stream.async_read_some(asio::buffer(sink), kTuple);
        if (rec) break;
        total += got;
      }
      break;
    }
    stream.expires_never();
    HttpRequest req = parser.release();
    bool keep = false;
    try {
      keep = co_await handle(stream, req);
    } catch (const std::exception& e) {
      log_event(spdlog::level::err, "request handler failed", {{"error", e.what()}});
      keep = false;
    }
    if (!keep) break;
  }
  boost::system::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  stream.socket().close(ec);
}

awaitable<bool> Server::Impl::handle(beast::tcp_stream& stream, HttpRequest& req) {
  const auto received = Clock::now();
  const std::string rid = "req-" + std::to_string(next_request++);
  std::string path(req.target());
  if (const auto q = path.find('?'); q != std::string::npos) path.resize(q);
  struct Route {
    const char* path;
    http::verb verb;
  };
  static const Route routes[] = {{"/health", http::verb::get},
                                 {"/metrics", http::verb::get},
                                 {"/v1/models", http::verb::get},
                                 {"/v1/completions", http::verb::post},
                                 {"/v1/chat/completions", http::verb::post}};
  const Route* route = nullptr;
  for (const auto& r : routes)
    if (path == r.path) route = &r;
  // What to answer, decided first: GCC 12 miscompiles some temporaries inside co_await
  // expressions, so the awaited calls below take only named values.
  std::optional<ApiError> refused;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string endpoint = route ? route->path : "other";
  http::status status = http::status::ok;
  std::string body;
  std::string content_type = "application/json";
  if (!route) {
    refused.emplace(404, "no such path: " + path, "", "invalid_request_error", "not_found");
  } else if (req.method() != route->verb) {
    const std::string allowed(http::to_string(route->verb));
    refused.emplace(
        405,
        std::string(req.method_string()) + " is not allowed on " + path + " (use " + allowed + ")",
        "", "invalid_request_error", "method_not_allowed");
    headers.emplace_back("Allow", allowed);
  } else if (endpoint == "/health") {
    const bool ok = worker.ready() && !draining;
    status = ok ? http::status::ok : http::status::service_unavailable;
    body = ok ? R"({"status":"ok"})"
              : (draining ? R"({"status":"draining"})" : R"({"status":"loading"})");
  } else if (endpoint == "/metrics") {
    body = metrics.render(in_flight.load());
    content_type = "text/plain; version=0.0.4; charset=utf-8";
  } else if (!options.api_key.empty() &&
             req[http::field::authorization] != "Bearer " + options.api_key) {
    refused.emplace(401,
                    req[http::field::authorization].empty()
                        ? "missing API key: send 'Authorization: Bearer KEY'"
                        : "invalid API key",
                    "", "invalid_request_error", "invalid_api_key");
    headers.emplace_back("WWW-Authenticate", "Bearer");
  } else if (endpoint == "/v1/models") {
    json::object m{{"id", options.model_name},
                   {"object", "model"},
                   {"created", unix_now()},
                   {"owned_by", "tessera"}};
    json::object list{{"object", "list"}, {"data", json::array{m}}};
    body = json::serialize(list);
  } else {
    const Endpoint which = endpoint == "/v1/completions" ? Endpoint::kCompletions : Endpoint::kChat;
    co_return co_await generate(stream, req, which, rid, received);
  }
  if (refused) co_return co_await respond_error(stream, req, *refused, endpoint, rid, headers);
  co_return co_await respond(stream, req, status, endpoint, std::move(body), rid, content_type,
                             headers);
}

awaitable<bool> Server::Impl::generate(beast::tcp_stream& stream, HttpRequest& http_req,
                                       Endpoint endpoint, std::string rid,
                                       Clock::time_point received) {
  const std::string ep = endpoint == Endpoint::kChat ? "/v1/chat/completions" : "/v1/completions";
  CompletionRequest cr;
  std::vector<int32_t> prompt;
  int max_tokens = 0;
  std::optional<ApiError> refused;
  try {
    cr = parse_completion_request(http_req.body(), endpoint);
    if (!cr.model.empty() && cr.model != options.model_name)
      throw ApiError(404,
                     "'model': '" + cr.model + "' is not served here (this daemon serves '" +
                         options.model_name + "')",
                     "model", "invalid_request_error", "model_not_found");
    if (draining) throw ApiError(503, "the server is shutting down", {}, "server_error");
    if (!worker.ready())
      throw ApiError(503, "the model is still loading; retry when /health answers 200", {},
                     "server_error");
    const Limits& lim = worker.limits();
    if (endpoint == Endpoint::kCompletions) {
      if (cr.prompt_is_tokens) {
        prompt = cr.prompt_tokens;
        for (size_t i = 0; i < prompt.size(); ++i)
          if (uint32_t(prompt[i]) >= lim.n_vocab)
            throw ApiError(400,
                           "'prompt[" + std::to_string(i) + "]': token " +
                               std::to_string(prompt[i]) + " is outside the vocabulary of " +
                               std::to_string(lim.n_vocab),
                           "prompt[" + std::to_string(i) + "]");
      } else {
        prompt = tok.encode(cr.prompt, true, true);
      }
    } else {
      if (!chat)
        throw ApiError(400, "chat completions are not available: " + chat_problem, "messages",
                       "invalid_request_error", "chat_template_unavailable");
      ChatRenderOptions render;
      render.reasoning_effort = cr.reasoning_effort;
      prompt = tok.encode(apply_chat_template(*chat, cr.messages, render), true, true);
    }
    if (prompt.empty()) throw ApiError(400, "'prompt' encodes to no tokens", "prompt");
    const int64_t n_prompt = int64_t(prompt.size());
    const int64_t room = std::min<int64_t>(lim.max_context, lim.kv_capacity_tokens);
    if (n_prompt >= room)
      throw ApiError(400,
                     "the prompt is " + std::to_string(n_prompt) + " tokens; the context holds " +
                         std::to_string(lim.max_context) + " tokens per sequence (KV cache: " +
                         std::to_string(lim.kv_capacity_tokens) + " tokens)",
                     endpoint == Endpoint::kChat ? "messages" : "prompt", "invalid_request_error",
                     "context_length_exceeded");
    max_tokens =
        cr.max_tokens ? *cr.max_tokens : (endpoint == Endpoint::kChat ? int(room - n_prompt) : 16);
    // Positions the sequence holds: the prompt and every generated token but the last.
    const int64_t need = n_prompt + max_tokens - 1;
    const char* field = cr.max_tokens ? "max_tokens" : "prompt";
    if (need > lim.max_context)
      throw ApiError(400,
                     "prompt (" + std::to_string(n_prompt) + " tokens) + max_tokens (" +
                         std::to_string(max_tokens) + ") needs " + std::to_string(need) +
                         " positions; the context is " + std::to_string(lim.max_context) +
                         " tokens per sequence",
                     field, "invalid_request_error", "context_length_exceeded");
    if (need > lim.kv_capacity_tokens)
      throw ApiError(400,
                     "prompt (" + std::to_string(n_prompt) + " tokens) + max_tokens (" +
                         std::to_string(max_tokens) + ") needs " + std::to_string(need) +
                         " positions; the KV cache holds " +
                         std::to_string(lim.kv_capacity_tokens) + " tokens",
                     field, "invalid_request_error", "kv_capacity_exceeded");
    if (in_flight.load() >= lim.max_sequences + options.max_queue)
      throw ApiError(429,
                     "the server is at capacity (" + std::to_string(in_flight.load()) +
                         " requests in flight; " + std::to_string(lim.max_sequences) +
                         " run at once, " + std::to_string(options.max_queue) +
                         " may wait); retry later",
                     {}, "rate_limit_error", "server_busy");
  } catch (const ApiError& e) {
    refused.emplace(e);
  } catch (const tokenizer::TokenizerError& e) {
    refused.emplace(400, e.what(), "prompt");
  }
  if (refused) {
    std::vector<std::pair<std::string, std::string>> headers;
    if (refused->status == 429 || refused->status == 503) headers.push_back({"Retry-After", "1"});
    co_return co_await respond_error(stream, http_req, *refused, ep, rid, headers);
  }

  // Hand the request to the engine thread.
  auto ex = co_await asio::this_coro::executor;
  auto job = std::make_shared<Job>(ex);
  engine::Request er;
  er.prompt = prompt;
  er.max_tokens = max_tokens;
  er.sampling.temperature = cr.temperature;
  er.sampling.top_k = cr.top_k;
  er.sampling.top_p = cr.top_p;
  er.sampling.seed = cr.seed ? *cr.seed : std::random_device{}();
  if (!cr.ignore_eos) er.is_eog = [t = &tok](int32_t id) { return t->is_eog(id); };
  er.on_output = [job, ex](const engine::RequestOutput& out) {
    {
      std::lock_guard lock(job->mutex);
      job->events.push_back({out.token, out.finish, out.error, Clock::now()});
    }
    asio::post(ex, [job] { job->timer.cancel(); });
  };
  ++in_flight;
  {
    std::lock_guard lock(jobs_mutex);
    jobs.insert(job);
  }
  job->id = worker.submit(std::move(er));
  struct Release {
    Impl* s;
    std::shared_ptr<Job> job;
    ~Release() {
      {
        std::lock_guard lock(s->jobs_mutex);
        s->jobs.erase(job);
      }
      --s->in_flight;
    }
  } release{this, job};

  // The client going away: the socket turns readable with nothing to read.
  const int fd = stream.socket().native_handle();
  stream.socket().async_wait(tcp::socket::wait_read, [job, fd](boost::system::error_code ec) {
    if (ec) return;
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      job->disconnected = true;
      job->timer.cancel();
    }
  });

  const std::string id = (endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-") + rid.substr(4);
  const int64_t created = unix_now();
  const bool chat_ep = endpoint == Endpoint::kChat;
  const auto idle = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(options.idle_timeout_s));
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::chrono::duration<double>(options.request_timeout_s));
  job->timer.expires_at(deadline);

  // Harmony replies (gpt-oss): the final channel is the content, the analysis channel goes to
  // reasoning_content (as llama-server names it); special tokens are rendered for the parser.
  const bool harmony = chat_ep && chat && chat->family == ChatFamily::kHarmony;
  auto chunk_json = [&](const std::string& text, const std::string& reasoning, const char* finish) {
    json::object choice;
    choice["index"] = 0;
    if (chat_ep) {
      json::object delta;
      if (finish == nullptr && !reasoning.empty()) delta["reasoning_content"] = reasoning;
      if (finish == nullptr && (!text.empty() || reasoning.empty())) delta["content"] = text;
      choice["delta"] = std::move(delta);
    } else {
      choice["text"] = text;
      choice["logprobs"] = nullptr;
    }
    choice["finish_reason"] = finish ? json::value(finish) : json::value(nullptr);
    json::object o{{"id", id},
                   {"object", chat_ep ? "chat.completion.chunk" : "text_completion"},
                   {"created", created},
                   {"model", options.model_name}};
    o["choices"] = json::array{std::move(choice)};
    return o;
  };

  // Streaming: headers now, then one SSE event per piece of text.
  bool streaming_ok = true;
  http::response<http::empty_body> head{http::status::ok, http_req.version()};
  http::response_serializer<http::empty_body> head_sr{head};
  auto send_event = [&](std::string data) -> awaitable<bool> {
    const std::string line = "data: " + data + "\n\n";
    stream.expires_after(idle);
    auto [ec, n] = co_await asio::async_write(stream, http::make_chunk(asio::buffer(line)), kTuple);
    (void)n;
    co_return !ec;
  };
  if (cr.stream) {
    head.set(http::field::server, "tessera");
    head.set(http::field::content_type, "text/event-stream");
    head.set(http::field::cache_control, "no-cache");
    head.set("X-Request-Id", rid);
    head.keep_alive(http_req.keep_alive());
    head.chunked(true);
    stream.expires_after(idle);
    auto [ec, n] = co_await http::async_write_header(stream, head_sr, kTuple);
    (void)n;
    streaming_ok = !ec;
    if (streaming_ok && chat_ep) {
      auto first = chunk_json("", "", nullptr);
      first["choices"].as_array()[0].as_object()["delta"] =
          json::object{{"role", "assistant"}, {"content", ""}};
      streaming_ok = co_await send_event(json::serialize(first));
    }
  }

  TextStream text(cr.stop);
  HarmonyParser replies;
  TextStream reasoning_text({});
  std::string full, full_reasoning;
  int generated = 0;
  engine::FinishReason finish = engine::FinishReason::kNone;
  std::string error;
  bool stopped = false, timed_out = false;
  Clock::time_point last_token{};
  double ttft = -1;
  while (finish == engine::FinishReason::kNone && !stopped && streaming_ok && !job->disconnected) {
    std::deque<Event> events;
    {
      std::lock_guard lock(job->mutex);
      events.swap(job->events);
    }
    for (auto& ev : events) {
      if (ev.token >= 0) {
        ++generated;
        if (generated == 1) {
          ttft = std::chrono::duration<double>(ev.at - received).count();
          metrics.observe_ttft(ttft);
        } else {
          metrics.observe_itl(std::chrono::duration<double>(ev.at - last_token).count());
        }
        last_token = ev.at;
        if (ev.finish != engine::FinishReason::kEog) {
          std::string delta, reasoning;
          if (harmony) {
            const HarmonyDelta d = replies.push(tok.token_to_piece(ev.token, true));
            reasoning = reasoning_text.push(d.reasoning);
            delta = text.push(d.content);
          } else {
            delta = text.push(tok.token_to_piece(ev.token, false));
          }
          full += delta;
          full_reasoning += reasoning;
          if ((!delta.empty() || !reasoning.empty()) && cr.stream && streaming_ok) {
            std::string data = json::serialize(chunk_json(delta, reasoning, nullptr));
            streaming_ok = co_await send_event(std::move(data));
          }
          if (text.stopped()) {
            stopped = true;
            worker.abort(job->id);
            break;
          }
        }
      }
      if (ev.finish != engine::FinishReason::kNone) {
        finish = ev.finish;
        error = ev.error;
        break;
      }
    }
    if (finish != engine::FinishReason::kNone || stopped || !streaming_ok || job->disconnected)
      break;
    if (Clock::now() >= deadline) {
      timed_out = true;
      worker.abort(job->id);
      break;
    }
    // Events that arrived while this loop was writing: their wake-up found no wait to cancel.
    // Checked with no suspension before the wait, so a later wake-up cannot be lost (strand).
    {
      std::lock_guard lock(job->mutex);
      if (!job->events.empty()) continue;
    }
    co_await job->timer.async_wait(kTuple);
  }
  // Stop watching the socket for the client's departure.
  {
    boost::system::error_code ec;
    stream.socket().cancel(ec);
  }
  const double total_s = seconds_since(received);
  json::object log_fields{{"request_id", rid},
                          {"endpoint", ep},
                          {"prompt_tokens", int64_t(prompt.size())},
                          {"completion_tokens", generated},
                          {"ttft_ms", ttft >= 0 ? json::value(ttft * 1e3) : json::value(nullptr)},
                          {"total_ms", total_s * 1e3},
                          {"stream", cr.stream}};
  metrics.count_tokens(int(prompt.size()), generated);
  if (job->disconnected || !streaming_ok) {
    if (finish == engine::FinishReason::kNone) worker.abort(job->id);
    metrics.count_request(ep, 499);
    log_fields["status"] = 499;
    log_event(spdlog::level::info, "client went away, request cancelled", log_fields);
    co_return false;
  }
  const char* reason = "stop";
  std::optional<ApiError> failure;
  if (timed_out) {
    failure.emplace(504,
                    "the request ran past the server's request timeout of " +
                        std::to_string(int(options.request_timeout_s)) + " s and was cancelled",
                    "", "server_error", "timeout");
  } else if (finish == engine::FinishReason::kFailed) {
    failure.emplace(500, "generation failed: " + error, "", "server_error");
  } else if (finish == engine::FinishReason::kAborted) {
    failure.emplace(503, "the request was cancelled: the server is shutting down", "",
                    "server_error");
  } else if (finish == engine::FinishReason::kLength) {
    reason = "length";
  }
  if (!failure) {
    std::string rest, reasoning_rest;
    if (harmony) {
      const HarmonyDelta d = replies.finish();
      reasoning_rest = reasoning_text.push(d.reasoning) + reasoning_text.finish();
      if (!stopped) {
        rest = text.push(d.content);
        if (text.stopped())
          reason = "stop";
        else
          rest += text.finish();
      }
    } else if (!stopped) {
      rest = text.finish();
    }
    full += rest;
    full_reasoning += reasoning_rest;
    if (cr.stream && (!rest.empty() || !reasoning_rest.empty())) {
      std::string data = json::serialize(chunk_json(rest, reasoning_rest, nullptr));
      streaming_ok = co_await send_event(std::move(data));
    }
  }
  json::object usage{{"prompt_tokens", int64_t(prompt.size())},
                     {"completion_tokens", generated},
                     {"total_tokens", int64_t(prompt.size()) + generated}};
  if (!cr.stream) {
    if (failure) co_return co_await respond_error(stream, http_req, *failure, ep, rid, {});
    json::object choice{{"index", 0}, {"finish_reason", reason}};
    if (chat_ep) {
      json::object message{{"role", "assistant"}, {"content", full}};
      if (!full_reasoning.empty()) message["reasoning_content"] = full_reasoning;
      choice["message"] = std::move(message);
    } else {
      choice["text"] = full;
      choice["logprobs"] = nullptr;
    }
    json::object body{{"id", id},
                      {"object", chat_ep ? "chat.completion" : "text_completion"},
                      {"created", created},
                      {"model", options.model_name},
                      {"choices", json::array{std::move(choice)}},
                      {"usage", usage}};
    log_fields["status"] = 200;
    log_fields["finish_reason"] = reason;
    log_event(spdlog::level::info, "request done", log_fields);
    std::string text = json::serialize(body);
    std::string type = "application/json";
    co_return co_await respond(stream, http_req, http::status::ok, ep, std::move(text), rid, type,
                               {});
  }
  if (failure) {
    if (streaming_ok) streaming_ok = co_await send_event(error_body(*failure));
    log_fields["status"] = failure->status;
    log_fields["error"] = failure->what();
  } else {
    auto last = chunk_json("", "", reason);
    last["usage"] = usage;
    if (streaming_ok) streaming_ok = co_await send_event(json::serialize(last));
    if (streaming_ok && cr.include_usage) {
      auto u = chunk_json("", "", nullptr);
      u["choices"] = json::array{};
      u["usage"] = usage;
      streaming_ok = co_await send_event(json::serialize(u));
    }
    log_fields["status"] = 200;
    log_fields["finish_reason"] = reason;
  }
  if (streaming_ok) streaming_ok = co_await send_event("[DONE]");
  if (streaming_ok) {
    stream.expires_after(idle);
    auto [ec, n] = co_await asio::async_write(stream, http::make_chunk_last(), kTuple);
    (void)n;
    streaming_ok = !ec;
  }
  metrics.count_request(ep, failure ? failure->status : 200);
  log_event(spdlog::level::info, "request done", log_fields);
  co_return streaming_ok&& http_req.keep_alive() && !draining;
}

}  // namespace tessera::server
