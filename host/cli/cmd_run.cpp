// `tessera run`: generates a continuation of a prompt and streams it, token by token, then prints a
// summary. The OpenCL engine is the default path (devices and placement from --device / --config);
// `--reference` runs the scalar reference path (host/engine/reference_model.h).
#include <boost/program_options.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "host/cli/command.h"
#include "host/cli/input_checks.h"
#include "host/cli/kv_cache_options.h"
#include "host/cli/output_file.h"
#include "host/cli/settings.h"
#include "host/engine/engine.h"
#include "host/engine/planning.h"
#include "host/engine/reference_model.h"
#include "host/engine/sampler.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"
#include "host/server/chat_template.h"
#include "host/server/harmony.h"
#include "host/tokenizer/tokenizer.h"

namespace tessera::cli {
namespace {

namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

std::vector<int32_t> parse_token_list(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0 || v > INT32_MAX) {
      throw std::runtime_error("--tokens: '" + item +
                               "' is not a token id (expected e.g. 1,403,407)");
    }
    ids.push_back(int32_t(v));
  }
  if (ids.empty()) throw std::runtime_error("--tokens: empty list");
  return ids;
}

// The model file used when -m is not given: the project's own trained model (models/), found next
// to the executable's build tree or through TESSERA_MODEL.
std::string default_model_path() {
  if (const char* env = std::getenv("TESSERA_MODEL"); env && *env) return env;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  const char* rel = "models/tessera-kjv-moe/tessera-kjv-moe-q8_0.gguf";
  for (auto dir = exe.parent_path(); !ec && !dir.empty() && dir != dir.root_path();
       dir = dir.parent_path())
    if (std::filesystem::exists(dir / rel)) return (dir / rel).string();
  throw std::runtime_error("no model given (-m) and the default model (" + std::string(rel) +
                           ") was not found next to the executable; set TESSERA_MODEL or pass -m");
}

// The reference path's forward passes of one sequence (the OpenCL path runs through the engine).
class ReferenceRunner {
 public:
  explicit ReferenceRunner(const model::ModelSpec& spec) : net_(spec), kv_(net_.new_kv_state()) {}
  std::vector<float> prefill(const std::vector<int32_t>& prompt) {
    std::vector<int32_t> pos(prompt.size());
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(i);
    return net_.forward(prompt, pos, kv_);
  }
  std::vector<float> decode(int32_t token) {
    const int32_t pos = int32_t(kv_.n_past);
    return net_.forward(std::span<const int32_t>(&token, 1), std::span<const int32_t>(&pos, 1),
                        kv_);
  }

 private:
  engine::ReferenceModel net_;
  engine::KvState kv_;
};

// Upload progress: a rewritten line on a terminal, a log line per quarter otherwise.
std::function<void(uint64_t, uint64_t)> progress_display() {
  const bool tty = isatty(fileno(stderr));
  auto last = std::make_shared<int>(-1);
  return [tty, last](uint64_t done, uint64_t total) {
    if (total == 0) return;
    const int pct = int(100.0 * double(done) / double(total));
    if (tty) {
      if (pct == *last) return;
      std::fprintf(stderr, "\rloading weights: %6.1f / %.1f MiB (%3d%%)%s",
                   double(done) / 1048576.0, double(total) / 1048576.0, pct,
                   done >= total ? "\n" : "");
    } else {
      if (pct / 25 == *last / 25 && done < total) return;
      std::fprintf(stderr, "loading weights: %.1f / %.1f MiB (%d%%)\n", double(done) / 1048576.0,
                   double(total) / 1048576.0, pct);
    }
    *last = pct;
  };
}

void print_engine_summary(engine::Engine& e) {
  const auto& m = e.model();
  const auto& plan = m.plan();
  const auto& st = m.stats();
  const auto& cache = e.model().kv_cache();
  const auto& kv = cache.blocks();
  std::fprintf(stderr, "%s\n", kv_format_summary(cache).c_str());
  if (cache.n_groups() == 1) {
    std::fprintf(stderr, "KV cache: %d of %d blocks used (%d tokens per block)\n",
                 e.counters().kv_blocks_peak, kv.n_blocks(), kv.block_size());
  } else {
    // Layers of one attention window share block tables; a window group releases the blocks that
    // fell out of its window, so its count stays bounded as sequences grow.
    const auto& peaks = e.counters().kv_group_blocks_peak;
    for (int32_t g = 0; g < cache.n_groups(); ++g) {
      const auto& blocks = cache.blocks(g);
      const std::string what =
          blocks.window() > 0 ? "layers with a " + std::to_string(blocks.window()) + "-token window"
                              : std::string("layers with the whole context");
      std::fprintf(stderr, "KV cache, %s: %d of %d blocks used (%d tokens per block)\n",
                   what.c_str(), size_t(g) < peaks.size() ? peaks[size_t(g)] : 0, blocks.n_blocks(),
                   blocks.block_size());
    }
  }
  if (const kv::RecurrentStatePool* states = m.memory().states()) {
    // Recurrent layers (Mamba2): a fixed state per sequence slot, whatever the context.
    int layers = 0;
    uint64_t per_seq = 0;
    for (int32_t l = 0; l < int32_t(m.spec().layers.size()); ++l) {
      layers += states->layer_bytes(l) > 0;
      per_seq += states->layer_bytes(l);
    }
    std::fprintf(stderr,
                 "recurrent state: %d layers, %llu bytes per sequence, %d slots (%.2f MiB)\n",
                 layers, static_cast<unsigned long long>(per_seq), states->n_slots(),
                 double(per_seq) * states->n_slots() / 1048576.0);
  }
  for (size_t d = 0; d < plan.devices.size(); ++d) {
    int experts = 0, layers = 0;
    for (size_t l = 0; l < plan.layer_device.size(); ++l) {
      experts += plan.experts_on(int(l), int(d));
      layers += plan.layer_device[l] == int(d);
    }
    std::fprintf(stderr, "device %s: %d layers, %d experts, %llu expert hits, %.3f s expert time\n",
                 plan.devices[d].id.c_str(), layers, experts,
                 static_cast<unsigned long long>(st.expert_hits[d]), st.device_seconds[d]);
  }
  if (st.balancer_moves)
    std::fprintf(stderr, "balancer: %llu expert moves\n",
                 static_cast<unsigned long long>(st.balancer_moves));
  double total = 0;
  for (const auto& [k, v] : st.device_op_seconds) total += v;
  std::string line;
  for (const auto& [k, v] : st.device_op_seconds) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%s%s %.1f ms (%.0f%%)", line.empty() ? "" : ", ", k.c_str(),
                  v * 1e3, total > 0 ? 100.0 * v / total : 0.0);
    line += buf;
  }
  if (!line.empty()) std::fprintf(stderr, "device time per op family: %s\n", line.c_str());
}

int run_generate(const std::vector<std::string>& args) {
  std::string model_path, prompt, tokens, logits_path;
  int n_predict = 32;
  engine::SamplerConfig sc;
  bool reference = false, no_bos = false, ignore_eos = false, print_ids = false, balancer = false;
  bool chat = false;
  std::string chat_template;
  std::string template_names;
  for (const auto& n : server::chat_template_names())
    template_names += (template_names.empty() ? "" : ", ") + n;
  const std::string template_help = "chat template for --chat (implies it): a name (" +
                                    template_names + ") or a Jinja file of one of these families";
  std::string config_path, device;
  std::vector<std::string> sets;
  KvCacheTypes cache_types;
  po::options_description opts(
      "tessera run [-m MODEL.gguf] (-p TEXT | --tokens IDS) [-n N] [--device ID | --config FILE] "
      "[sampling options]");
  opts.add_options()("help,h", "show this help")(
      "reference", po::bool_switch(&reference),
      "run the scalar reference path (single-threaded host code)")(
      "model,m", po::value<std::string>(&model_path),
      "GGUF model file (default: the project's trained model)")(
      "device", po::value<std::string>(&device), "run on this one OpenCL device (e.g. gpu0, cpu0)")(
      "config", po::value<std::string>(&config_path),
      "device-selection config (YAML; see configs/README.md)")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(),
      "override a config key (KEY=VALUE)")(
      "balancer", po::bool_switch(&balancer),
      "let the expert balancer move hot experts (also balancer.enabled)")(
      "prompt,p", po::value<std::string>(&prompt), "prompt text")(
      "chat", po::bool_switch(&chat),
      "the prompt is one user message, rendered with the model's chat template "
      "(tokenizer.chat_template, as `tessera serve` renders it); harmony (gpt-oss): the reply's "
      "final channel to stdout, its reasoning (analysis channel) to stderr")(
      "chat-template", po::value<std::string>(&chat_template), template_help.c_str())(
      "tokens", po::value<std::string>(&tokens),
      "prompt as comma-separated token ids, e.g. 403,407 (BOS is added)")(
      "n-predict,n", po::value<int>(&n_predict)->default_value(32), "tokens to generate")(
      "temp", po::value<float>(&sc.temperature)->default_value(0.0f), "temperature; 0 = greedy")(
      "top-k", po::value<int>(&sc.top_k)->default_value(0),
      "keep the k most likely tokens (0 = all)")("top-p",
                                                 po::value<float>(&sc.top_p)->default_value(1.0f),
                                                 "nucleus probability mass (1 = all)")(
      "seed", po::value<uint64_t>(&sc.seed)->default_value(0), "sampling seed")(
      "no-bos", po::bool_switch(&no_bos), "do not add the BOS token the vocabulary asks for")(
      "ignore-eos", po::bool_switch(&ignore_eos),
      "keep generating after an end-of-generation token")(
      "ids", po::bool_switch(&print_ids), "print generated token ids instead of text")(
      "logits-out", po::value<std::string>(&logits_path),
      "write each step's logits (n_vocab float32, native byte order) to this file, for "
      "comparisons");
  add_kv_cache_type_options(opts, cache_types);
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (model_path.empty()) model_path = default_model_path();
  if (n_predict < 0) throw std::runtime_error("-n must be >= 0");
  if (vm.count("prompt") == vm.count("tokens")) {
    throw std::runtime_error(
        "give the prompt either as text (-p TEXT) or as ids (--tokens 1,2,3), not both or neither");
  }

  const auto file = gguf::GgufFile::open(model_path);
  const auto spec = model::ModelSpec::from_gguf(file);
  const engine::Sampler check_sampling(sc);  // bad sampling options fail before anything loads
  // A model without tokenizer metadata can still run from ids (and print ids).
  std::optional<tokenizer::Tokenizer> tok;
  if (file.find("tokenizer.ggml.model")) {
    tok.emplace(tokenizer::Tokenizer::from_gguf(file));
  } else if (vm.count("prompt")) {
    throw std::runtime_error(
        model_path + ": no tokenizer metadata (tokenizer.ggml.model); use --tokens and --ids");
  }
  if (!tok) print_ids = true;

  // --chat: the prompt as a user message through the chat template.
  if (!chat_template.empty()) chat = true;
  std::optional<server::ChatTemplate> tmpl;
  if (chat) {
    if (!vm.count("prompt")) throw std::runtime_error("--chat takes the prompt as text (-p TEXT)");
    if (!chat_template.empty()) {
      tmpl = server::chat_template_by_choice(chat_template, "--chat-template");
    } else if (const auto* v = file.find("tokenizer.chat_template")) {
      tmpl =
          server::recognise_chat_template(v->as_string(), model_path + ": tokenizer.chat_template");
    } else {
      throw std::runtime_error(model_path +
                               ": no tokenizer.chat_template; give --chat-template NAME (e.g. "
                               "plain for a base model)");
    }
    prompt = server::apply_chat_template(*tmpl, {{"user", prompt}});
  }
  const bool harmony = tmpl && tmpl->family == server::ChatFamily::kHarmony;
  server::HarmonyParser replies;
  bool wrote_reasoning = false;
  auto write_reply = [&](const server::HarmonyDelta& d) {
    std::fwrite(d.content.data(), 1, d.content.size(), stdout);
    std::fwrite(d.reasoning.data(), 1, d.reasoning.size(), stderr);
    wrote_reasoning = wrote_reasoning || !d.reasoning.empty();
  };

  std::vector<int32_t> prompt_ids;
  if (vm.count("prompt")) {
    prompt_ids = tok->encode(prompt, !no_bos, true);
  } else {
    if (!no_bos && tok && tok->add_bos() && tok->bos() >= 0) prompt_ids.push_back(tok->bos());
    for (int32_t id : parse_token_list(tokens)) prompt_ids.push_back(id);
  }
  if (prompt_ids.empty()) throw std::runtime_error("the prompt is empty (no tokens to start from)");
  for (int32_t id : prompt_ids) {
    if (id < 0 || uint32_t(id) >= spec.hp.n_vocab) {
      throw std::runtime_error("prompt token " + std::to_string(id) +
                               " is outside the vocabulary of " + std::to_string(spec.hp.n_vocab));
    }
  }
  if (prompt_ids.size() + size_t(n_predict) > spec.hp.n_ctx_train) {
    throw std::runtime_error("prompt (" + std::to_string(prompt_ids.size()) + " tokens) + -n " +
                             std::to_string(n_predict) + " exceeds the model's context length " +
                             std::to_string(spec.hp.n_ctx_train));
  }
  // Whole or absent: written to a temporary file renamed into place at the end.
  std::optional<OutputFile> logits_file;
  if (!logits_path.empty()) logits_file.emplace(logits_path, "--logits-out");

  // One sampled token out: its logits to --logits-out, the token to stdout. Returns whether it
  // is an end-of-generation token.
  int generated = 0;
  auto emit = [&](int32_t next, std::span<const float> logits) {
    if (logits_file) logits_file->write(logits.data(), logits.size() * sizeof(float));
    ++generated;
    const bool end = tok ? tok->is_eog(next) : false;
    if (print_ids) {
      std::printf("%s%d", generated > 1 ? " " : "", next);
    } else if (!end && harmony) {
      write_reply(replies.push(tok->token_to_piece(next, true)));
    } else if (!end) {
      const std::string piece = tok->token_to_piece(next, false);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
    }
    check_stdout();  // stop at once when the text cannot be delivered
    return end;
  };

  Clock::time_point t0, t1, t2;
  std::optional<engine::EngineSetup> setup;
  if (reference) {
    require_reference_memory(file, spec, prompt_ids.size() + size_t(n_predict));
    ReferenceRunner runner(spec);
    engine::Sampler sampler(sc);
    t0 = Clock::now();
    std::vector<float> logits = runner.prefill(prompt_ids);
    t1 = Clock::now();
    for (int i = 0; i < n_predict; ++i) {
      const int32_t next = sampler.sample(logits);
      const bool end = emit(next, logits);
      if (end && !ignore_eos) break;
      if (i + 1 == n_predict) break;
      logits = runner.decode(next);
    }
    t2 = Clock::now();
  } else {
    engine::EngineSetupOptions so;
    so.no_fuse = settings().no_fuse;
    so.fuse = settings().fuse;
    so.config_path = config_path;
    so.sets = sets;
    prepend_kv_cache_sets(cache_types, so.sets);
    so.device = device;
    so.context_tokens =
        int(std::min<size_t>(spec.hp.n_ctx_train ? spec.hp.n_ctx_train : 4096,
                             std::max<size_t>(256, prompt_ids.size() + size_t(n_predict) + 16)));
    so.max_sequences = 1;
    so.balancer = balancer;
    so.profile = true;
    so.progress = progress_display();
    so.programs = tessera::cli::program_cache();
    so.probe_dir = tessera::cli::probe_dir();
    so.device_limits = tessera::cli::device_limits();
    setup.emplace(engine::setup_engine(spec, so));
    std::fprintf(stderr, "loaded %.1f MiB onto %zu device(s) in %.2f s\n",
                 double(setup->engine->model().uploaded_bytes()) / 1048576.0,
                 setup->plan().devices.size(), setup->load_seconds);
    engine::Request req;
    req.prompt = prompt_ids;
    req.max_tokens = n_predict;
    req.sampling = sc;
    if (tok && !ignore_eos) req.is_eog = [&](int32_t id) { return tok->is_eog(id); };
    req.return_logits = bool(logits_file);
    std::string error;
    bool first = true;
    req.on_output = [&](const engine::RequestOutput& out) {
      if (first) t1 = Clock::now();  // the prompt's logits are back
      first = false;
      if (out.token >= 0) emit(out.token, out.logits);
      if (out.finish == engine::FinishReason::kFailed) error = out.error;
    };
    t0 = Clock::now();
    setup->engine->add_request(std::move(req));
    setup->engine->run_until_idle();
    t2 = Clock::now();
    if (!error.empty()) throw engine::RequestError(error);
  }
  if (harmony && !print_ids) {
    write_reply(replies.finish());
    if (wrote_reasoning) std::fputc('\n', stderr);
  }
  std::printf("\n");
  check_stdout();
  if (logits_file) logits_file->commit();
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr,
               "prompt tokens: %zu, generated tokens: %d, prefill %.3f s (%.1f tokens/s), "
               "decode %.3f s (%.1f tokens/s), total %.3f s\n",
               prompt_ids.size(), generated, prefill_s, double(prompt_ids.size()) / prefill_s,
               decode_s, generated > 1 ? double(generated - 1) / decode_s : 0.0,
               prefill_s + decode_s);
  if (setup) print_engine_summary(*setup->engine);
  return 0;
}

const CommandRegistrar kRegistrar(
    "run", "generate text from a prompt on the OpenCL devices (--reference: host path)",
    run_generate);

}  // namespace
}  // namespace tessera::cli
