// `tessera serve`: the OpenAI-compatible daemon (host/server) over the same engine setup as
// `tessera run` (one config, the same planner and placement).
#include <boost/asio/ip/address.hpp>
#include <boost/program_options.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "host/cli/command.h"
#include "host/cli/settings.h"
#include "host/engine/planning.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"
#include "host/server/chat_template.h"
#include "host/server/log.h"
#include "host/server/server.h"
#include "host/tokenizer/tokenizer.h"

namespace tessera::cli {
namespace {

namespace po = boost::program_options;

int run_serve(const std::vector<std::string>& args) {
  std::string model_path, config_path, device, chat_template, log_format = "text";
  std::vector<std::string> sets;
  server::ServerOptions so;
  int ctx = 0, parallel = 16, port = 8080, prefill_chunk = 128;
  std::string template_names;
  for (const auto& n : server::chat_template_names())
    template_names += (template_names.empty() ? "" : ", ") + n;
  const std::string template_help = "chat template: a name (" + template_names +
                                    ") or a Jinja file of one of these families (default: the "
                                    "model's tokenizer.chat_template)";
  po::options_description opts(
      "tessera serve -m MODEL.gguf [--config FILE] [--host ADDR] [--port N] [--api-key KEY]");
  opts.add_options()("help,h", "show this help")(
      "model,m", po::value<std::string>(&model_path)->required(), "GGUF model file")(
      "config", po::value<std::string>(&config_path),
      "config (YAML; see configs/README.md): devices, placement, batching and a server: section "
      "with these flags' settings (a flag given here overrides the file)")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(),
      "override a config key (KEY=VALUE)")("device", po::value<std::string>(&device),
                                           "run on this one OpenCL device (e.g. gpu0)")(
      "host", po::value<std::string>(&so.host)->default_value("127.0.0.1"), "address to bind")(
      "port", po::value<int>(&port)->default_value(8080), "port to bind (0: any free port)")(
      "api-key", po::value<std::string>(&so.api_key),
      "require 'Authorization: Bearer KEY' on /v1/*")(
      "model-name", po::value<std::string>(&so.model_name),
      "model id served (default: the file name without .gguf)")(
      "ctx", po::value<int>(&ctx)->default_value(0),
      "context tokens per sequence (0: the model's, at most 4096)")(
      "parallel", po::value<int>(&parallel)->default_value(16),
      "sequences run at once (the config's batching.max_sequences)")(
      "prefill-chunk", po::value<int>(&prefill_chunk)->default_value(128),
      "prompt tokens of one request per step (the config's batching.prefill_chunk)")(
      "max-queue", po::value<int>(&so.max_queue)->default_value(64),
      "requests that may wait beyond --parallel; more get 429")(
      "body-limit", po::value<size_t>(&so.body_limit)->default_value(1 << 20),
      "bytes of a request body; more get 413")(
      "request-timeout", po::value<double>(&so.request_timeout_s)->default_value(600),
      "seconds a generation may run")("idle-timeout",
                                      po::value<double>(&so.idle_timeout_s)->default_value(60),
                                      "seconds an idle connection is kept")(
      "grace", po::value<double>(&so.grace_s)->default_value(30),
      "seconds in-flight requests may finish after SIGTERM/SIGINT")(
      "threads", po::value<int>(&so.io_threads)->default_value(2), "network threads")(
      "chat-template", po::value<std::string>(&chat_template), template_help.c_str())(
      "log-format", po::value<std::string>(&log_format)->default_value("text"), "text or json");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;

  // The config's server: section (and --set server.KEY=VALUE, checked as the file is); a flag
  // given on the command line wins over it, the file over the flag's default. --parallel and
  // --prefill-chunk given here override the file's batching keys.
  const sched::ServerSettings file_settings =
      engine::config_from_cli(config_path, sets, device).server;
  auto given = [&](const char* flag) { return vm.count(flag) && !vm[flag].defaulted(); };
  auto pick = [&](const char* flag, auto& value, const auto& from_file) {
    if (!given(flag) && from_file) value = *from_file;
  };
  pick("host", so.host, file_settings.host);
  pick("port", port, file_settings.port);
  pick("api-key", so.api_key, file_settings.api_key);
  pick("model-name", so.model_name, file_settings.model_name);
  pick("ctx", ctx, file_settings.ctx);
  pick("max-queue", so.max_queue, file_settings.max_queue);
  pick("body-limit", so.body_limit, file_settings.body_limit);
  pick("request-timeout", so.request_timeout_s, file_settings.request_timeout);
  pick("idle-timeout", so.idle_timeout_s, file_settings.idle_timeout);
  pick("grace", so.grace_s, file_settings.grace);
  pick("threads", so.io_threads, file_settings.threads);
  pick("chat-template", chat_template, file_settings.chat_template);
  pick("log-format", log_format, file_settings.log_format);
  const std::string template_key = given("chat-template") || !file_settings.chat_template
                                       ? "--chat-template"
                                       : "server.chat_template";
  const std::string host_key = given("host") || !file_settings.host ? "--host" : "server.host";
  if (given("parallel") && parallel >= 1)
    sets.push_back("batching.max_sequences=" + std::to_string(parallel));
  if (given("prefill-chunk") &&
      prefill_chunk >= 0)  // 0: a whole step's tokens (max_batch_tokens below)
    sets.push_back("batching.prefill_chunk=" +
                   std::to_string(prefill_chunk > 0 ? prefill_chunk : std::max(256, parallel)));

  if (log_format == "json")
    server::use_json_logs();
  else if (log_format != "text")
    throw std::runtime_error("--log-format must be text or json (got '" + log_format + "')");
  if (!std::getenv("TESSERA_LOG")) spdlog::set_level(spdlog::level::info);
  if (port < 0 || port > 65535)
    throw std::runtime_error("--port must be in 0..65535 (got " + std::to_string(port) + ")");
  so.port = uint16_t(port);
  if (parallel < 1) throw std::runtime_error("--parallel must be >= 1");
  if (ctx < 0) throw std::runtime_error("--ctx must be >= 0");
  if (prefill_chunk < 0) throw std::runtime_error("--prefill-chunk must be >= 0");
  if (so.max_queue < 0) throw std::runtime_error("--max-queue must be >= 0");
  if (so.body_limit < 1024) throw std::runtime_error("--body-limit must be >= 1024");
  if (!(so.request_timeout_s > 0) || !(so.idle_timeout_s > 0) || !(so.grace_s >= 0))
    throw std::runtime_error("--request-timeout and --idle-timeout must be > 0, --grace >= 0");
  if (so.io_threads < 1 || so.io_threads > 64)
    throw std::runtime_error("--threads must be in 1..64");
  {
    boost::system::error_code ec;
    boost::asio::ip::make_address(so.host, ec);
    if (ec)
      throw std::runtime_error(host_key + " '" + so.host + "' is not an IP address (" +
                               ec.message() + ")");
  }

  const auto file = gguf::GgufFile::open(model_path);
  const auto spec = model::ModelSpec::from_gguf(file);
  if (!file.find("tokenizer.ggml.model"))
    throw std::runtime_error(model_path +
                             ": no tokenizer metadata (tokenizer.ggml.model); the daemon serves "
                             "text");
  const auto tok = tokenizer::Tokenizer::from_gguf(file);
  if (so.model_name.empty()) so.model_name = std::filesystem::path(model_path).stem().string();

  // The chat template: named, from a file, or the model's own.
  std::optional<server::ChatTemplate> chat;
  std::string chat_problem;
  if (!chat_template.empty()) {
    chat = server::chat_template_by_choice(chat_template, template_key);
  } else if (const auto* v = file.find("tokenizer.chat_template")) {
    try {
      chat = server::recognise_chat_template(v->as_string(), "tokenizer.chat_template");
    } catch (const server::ChatTemplateError& e) {
      chat_problem = e.what();
      spdlog::warn("{}; chat completions are refused", chat_problem);
    }
  } else {
    chat_problem =
        "the model has no tokenizer.chat_template; start the daemon with "
        "--chat-template NAME (e.g. plain for a base model)";
  }

  engine::EngineSetupOptions eo;
  eo.no_fuse = settings().no_fuse;
  eo.fuse = settings().fuse;
  eo.config_path = config_path;
  eo.sets = sets;
  eo.device = device;
  const int model_ctx = spec.hp.n_ctx_train ? int(spec.hp.n_ctx_train) : 4096;
  eo.context_tokens = ctx > 0 ? std::min(ctx, model_ctx) : std::min(model_ctx, 4096);
  eo.max_sequences = parallel;
  eo.max_batch_tokens = std::max(256, parallel);
  eo.prefill_chunk = prefill_chunk;
  eo.programs = program_cache();
  eo.probe_dir = probe_dir();
  eo.device_limits = device_limits();

  // Test hook: TESSERA_SERVE_LOAD_DELAY_MS holds the load back that long, so that a test can see
  // the daemon while it loads (/health 503) with a model that loads in no time.
  int load_delay_ms = 0;
  if (const char* v = std::getenv("TESSERA_SERVE_LOAD_DELAY_MS")) load_delay_ms = std::atoi(v);
  server::Server srv(so, tok, chat, chat_problem, [&spec, eo, load_delay_ms] {
    if (load_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(load_delay_ms));
    return engine::setup_engine(spec, eo);
  });
  srv.listen();
  std::printf("tessera serve: listening on http://%s:%u (model %s loading)\n", so.host.c_str(),
              unsigned(srv.port()), so.model_name.c_str());
  std::fflush(stdout);
  return srv.run();
}

const CommandRegistrar kRegistrar("serve", "serve a model over an OpenAI-compatible HTTP API",
                                  run_serve);

}  // namespace
}  // namespace tessera::cli
