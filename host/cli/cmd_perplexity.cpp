// `tessera perplexity -m MODEL -f TEXT [--ctx N]`: perplexity of a text, scored as llama.cpp's
// llama-perplexity does (chunks of --ctx tokens, BOS first, the second half of each chunk scored).
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "host/cli/command.h"
#include "host/cli/input_checks.h"
#include "host/cli/settings.h"
#include "host/engine/engine.h"
#include "host/engine/planning.h"
#include "host/engine/reference_model.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"
#include "host/tokenizer/tokenizer.h"

namespace tessera::cli {
namespace {

namespace po = boost::program_options;

// -log softmax(logits)[target], in double.
double nll(const float* logits, size_t n, int32_t target) {
  double mx = logits[0];
  for (size_t i = 1; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
  return std::log(sum) + mx - double(logits[size_t(target)]);
}

int run_perplexity(const std::vector<std::string>& args) {
  std::string model_path, text_path, config_path, device;
  std::vector<std::string> sets;
  int ctx = 512, max_chunks = 0;
  bool reference = false, json = false;
  po::options_description opts("tessera perplexity -m MODEL.gguf -f TEXT [--ctx N]");
  opts.add_options()("help,h", "show this help")(
      "model,m", po::value<std::string>(&model_path)->required(), "GGUF model file")(
      "file,f", po::value<std::string>(&text_path)->required(), "text file to score")(
      "ctx", po::value<int>(&ctx)->default_value(512), "tokens per chunk (llama-perplexity's -c)")(
      "chunks", po::value<int>(&max_chunks)->default_value(0),
      "score at most this many chunks (0 = all)")("reference", po::bool_switch(&reference),
                                                  "use the scalar reference path")(
      "config", po::value<std::string>(&config_path), "device-selection config (YAML)")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(), "override a config key")(
      "device", po::value<std::string>(&device), "use this one device only")(
      "json", po::bool_switch(&json), "print the result as JSON");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (ctx < 8) throw std::runtime_error("--ctx must be at least 8");
  if (max_chunks < 0) throw std::runtime_error("--chunks must be >= 0 (0 = all)");
  require_regular_file(text_path, "-f");
  std::ifstream in(text_path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open text file '" + text_path + "'");
  std::stringstream ss;
  ss << in.rdbuf();

  const auto file = gguf::GgufFile::open(model_path);
  const auto spec = model::ModelSpec::from_gguf(file);
  const auto tok = tokenizer::Tokenizer::from_gguf(file);
  const auto tokens = tok.encode(ss.str(), true, false);
  if (uint32_t(ctx) > spec.hp.n_ctx_train && spec.hp.n_ctx_train > 0)
    throw std::runtime_error("--ctx " + std::to_string(ctx) +
                             " exceeds the model's context length " +
                             std::to_string(spec.hp.n_ctx_train));
  int n_chunks = int(tokens.size() / size_t(ctx));
  if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);
  if (n_chunks == 0)
    throw std::runtime_error("the text has " + std::to_string(tokens.size()) +
                             " tokens, fewer than one chunk of " + std::to_string(ctx));
  const int first = ctx / 2;
  const size_t nv = spec.hp.n_vocab;

  std::optional<engine::EngineSetup> setup;
  std::unique_ptr<engine::ReferenceModel> ref;
  if (reference) {
    require_reference_memory(file, spec, uint64_t(ctx));
    ref = std::make_unique<engine::ReferenceModel>(spec);
  } else {
    engine::EngineSetupOptions so;
    so.no_fuse = settings().no_fuse;
    so.config_path = config_path;
    so.sets = sets;
    so.device = device;
    so.context_tokens = ctx;
    so.max_sequences = 1;
    so.max_batch_tokens = std::min(ctx, 256);
    so.all_logits = true;
    so.config_balancer = false;  // scores must not depend on experts moving mid-text
    so.programs = tessera::cli::program_cache();
    so.probe_dir = tessera::cli::probe_dir();
    so.device_limits = tessera::cli::device_limits();
    setup.emplace(engine::setup_engine(spec, so));
  }

  double total = 0;
  size_t count = 0;
  for (int c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> chunk(tokens.begin() + long(c) * ctx, tokens.begin() + long(c + 1) * ctx);
    if (tok.add_bos() && tok.bos() >= 0) chunk[0] = tok.bos();
    std::vector<float> logits;  // [ctx][n_vocab]
    if (ref) {
      auto kv = ref->new_kv_state();
      std::vector<int32_t> pos(chunk.size());
      for (size_t i = 0; i < pos.size(); ++i) pos[i] = int32_t(i);
      logits = ref->forward(chunk, pos, kv, true);
    } else {
      // One scoring request per chunk: every position's logits, prefilled in engine steps.
      engine::Request r;
      r.prompt = chunk;
      r.max_tokens = 0;
      r.return_prompt_logits = true;
      std::string error;
      r.on_output = [&](const engine::RequestOutput& out) {
        logits.insert(logits.end(), out.prompt_logits.begin(), out.prompt_logits.end());
        if (out.finish == engine::FinishReason::kFailed) error = out.error;
      };
      setup->engine->add_request(std::move(r));
      setup->engine->run_until_idle();
      if (!error.empty()) throw engine::RequestError(error);
    }
    for (int j = first; j < ctx - 1; ++j) {
      total += nll(logits.data() + size_t(j) * nv, nv, chunk[size_t(j) + 1]);
      ++count;
    }
    if (!json)
      std::fprintf(stderr, "[%d/%d] running perplexity %.4f\n", c + 1, n_chunks,
                   std::exp(total / double(count)));
  }
  const double ppl = std::exp(total / double(count));
  if (json) {
    boost::json::object o;
    o["perplexity"] = ppl;
    o["tokens_scored"] = count;
    o["chunks"] = n_chunks;
    o["ctx"] = ctx;
    o["path"] = reference ? "reference" : "opencl";
    std::cout << boost::json::serialize(o) << "\n";
  } else {
    std::printf("perplexity: %.4f over %zu scored tokens (%d chunks of %d, %s path)\n", ppl, count,
                n_chunks, ctx, reference ? "reference" : "OpenCL");
  }
  return 0;
}

const CommandRegistrar kRegistrar("perplexity",
                                  "perplexity of a text file (llama-perplexity's scoring)",
                                  run_perplexity);

}  // namespace
}  // namespace tessera::cli
