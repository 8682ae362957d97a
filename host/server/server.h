// `tessera serve`'s daemon: an OpenAI-compatible HTTP server (Boost.Beast on Asio threads) in front
// of one engine thread that owns the request engine and the devices. Network threads talk to the
// engine only through its request queue (Engine::add_request / abort_request) and per-request
// event queues the engine's callbacks fill.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "host/engine/planning.h"
#include "host/server/chat_template.h"
#include "host/tokenizer/tokenizer.h"

namespace tessera::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;            // 0: any free port (port() says which)
  std::string api_key;             // non-empty: /v1/* need "Authorization: Bearer KEY"
  std::string model_name;          // the id /v1/models lists and requests may name
  int io_threads = 2;              // Asio threads for the network side
  size_t body_limit = 1 << 20;     // bytes of a request body; more: 413
  int max_queue = 64;              // requests beyond the engine's max_sequences; more: 429
  double request_timeout_s = 600;  // a generation running longer is cancelled
  double idle_timeout_s = 60;      // a connection silent this long (between requests) is closed
  double grace_s = 30;             // SIGTERM/SIGINT: in-flight requests may finish this long
};

// Builds the engine; called once, on the engine thread (which then owns the devices).
using EngineFactory = std::function<engine::EngineSetup()>;

class Server {
 public:
  // `tokenizer` must outlive the server. `chat` is the chat template (nullopt: chat requests get
  // an error saying `chat_problem`).
  Server(ServerOptions options, const tokenizer::Tokenizer& tokenizer,
         std::optional<ChatTemplate> chat, std::string chat_problem, EngineFactory factory);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the listening socket. Throws TesseraError naming host:port when it cannot.
  void listen();
  uint16_t port() const;
  // Loads the model on the engine thread and serves (the calling thread is one of the Asio
  // threads) until SIGTERM/SIGINT or stop(): then stops accepting, lets in-flight requests finish
  // within grace_s (then cancels them), and returns 0; 1 when the model failed to load.
  int run();
  // What SIGTERM does; any thread.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::server
