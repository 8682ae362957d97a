// `tessera perplexity -m MODEL -f TEXT [--ctx N]`: perplexity of a text, scored as llama.cpp's
// llama-perplexity does (chunks of --ctx tokens, BOS first, the second half of each chunk scored).
// --kl-divergence-base FILE saves the scored positions' log-probabilities; with --kl-divergence it
// reads them back and compares this run's (e.g. another KV cache format) by KL divergence and top-1
// agreement, as llama-perplexity does.
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "host/cli/command.h"
#include "host/cli/input_checks.h"
#include "host/cli/kv_cache_options.h"
#include "host/cli/output_file.h"
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

// log softmax of one logit row, in float (what a KL-divergence base file stores).
std::vector<float> log_probs(const float* logits, size_t n) {
  double mx = logits[0];
  for (size_t i = 1; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
  const double lse = std::log(sum) + mx;
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = float(double(logits[i]) - lse);
  return out;
}

// KL-divergence base file: a header naming the text's tokenization, then per scored position the
// base run's log-probabilities (n_vocab float32, native byte order).
constexpr char kKldMagic[8] = {'T', 'S', 'K', 'L', 'D', 'B', '0', '1'};
struct KldHeader {
  char magic[8];
  uint32_t n_vocab, ctx, n_chunks, reserved;
  uint64_t token_hash;  // FNV-1a of the scored chunks' token ids
};

uint64_t token_hash(const std::vector<int32_t>& tokens, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= uint64_t(uint32_t(tokens[i]));
    h *= 1099511628211ull;
  }
  return h;
}

int run_perplexity(const std::vector<std::string>& args) {
  std::string model_path, text_path, config_path, device;
  std::vector<std::string> sets;
  int ctx = 512, max_chunks = 0;
  bool reference = false, json = false, kl_divergence = false;
  std::string kld_base_path;
  KvCacheTypes cache_types;
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
      "json", po::bool_switch(&json), "print the result as JSON")(
      "kl-divergence-base", po::value<std::string>(&kld_base_path),
      "without --kl-divergence: save the scored positions' log-probabilities to this file; with "
      "it: compare this run against them")(
      "kl-divergence", po::bool_switch(&kl_divergence),
      "report the KL divergence and top-1 agreement against --kl-divergence-base");
  add_kv_cache_type_options(opts, cache_types);
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (ctx < 8) throw std::runtime_error("--ctx must be at least 8");
  if (max_chunks < 0) throw std::runtime_error("--chunks must be >= 0 (0 = all)");
  if (kl_divergence && kld_base_path.empty())
    throw std::runtime_error("--kl-divergence needs --kl-divergence-base FILE (the base run's)");
  if (reference && (!cache_types.k.empty() || !cache_types.v.empty()))
    throw std::runtime_error(
        "--cache-type-k/-v choose the OpenCL path's KV cache; the reference path keeps f32 K/V");
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
    so.fuse = settings().fuse;
    so.config_path = config_path;
    so.sets = sets;
    prepend_kv_cache_sets(cache_types, so.sets);
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
    std::fprintf(stderr, "%s\n", kv_format_summary(setup->engine->model().kv_cache()).c_str());
  }

  // KL divergence: the base file to write, or to read and compare against.
  const KldHeader header{{},
                         uint32_t(nv),
                         uint32_t(ctx),
                         uint32_t(n_chunks),
                         0,
                         token_hash(tokens, size_t(n_chunks) * size_t(ctx))};
  std::optional<OutputFile> kld_out;
  std::ifstream kld_in;
  if (!kld_base_path.empty() && !kl_divergence) {
    kld_out.emplace(kld_base_path, "--kl-divergence-base");
    KldHeader h = header;
    std::memcpy(h.magic, kKldMagic, sizeof kKldMagic);
    kld_out->write(&h, sizeof h);
  } else if (kl_divergence) {
    require_regular_file(kld_base_path, "--kl-divergence-base");
    kld_in.open(kld_base_path, std::ios::binary);
    KldHeader h{};
    if (!kld_in.read(reinterpret_cast<char*>(&h), sizeof h) ||
        std::memcmp(h.magic, kKldMagic, sizeof kKldMagic) != 0)
      throw std::runtime_error("--kl-divergence-base: '" + kld_base_path +
                               "' is not a tessera KL-divergence base file");
    if (h.n_vocab != header.n_vocab || h.ctx != header.ctx || h.n_chunks != header.n_chunks ||
        h.token_hash != header.token_hash)
      throw std::runtime_error(
          "--kl-divergence-base: '" + kld_base_path + "' was saved for another text or setting (" +
          std::to_string(h.n_chunks) + " chunks of " + std::to_string(h.ctx) + ", vocabulary " +
          std::to_string(h.n_vocab) + "); this run scores " + std::to_string(n_chunks) +
          " chunks of " + std::to_string(ctx) + " with vocabulary " + std::to_string(nv) +
          (h.token_hash != header.token_hash ? " and different tokens" : ""));
  }
  double kld_sum = 0, kld_sq = 0;
  size_t kld_count = 0, top1_same = 0;
  std::vector<float> base(nv);

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
      const float* row = logits.data() + size_t(j) * nv;
      total += nll(row, nv, chunk[size_t(j) + 1]);
      ++count;
      if (kld_out) {
        const std::vector<float> lp = log_probs(row, nv);
        kld_out->write(lp.data(), nv * sizeof(float));
      } else if (kl_divergence) {
        if (!kld_in.read(reinterpret_cast<char*>(base.data()), std::streamsize(nv * sizeof(float))))
          throw std::runtime_error("--kl-divergence-base: '" + kld_base_path + "' is truncated");
        const std::vector<float> lp = log_probs(row, nv);
        double kld = 0;
        size_t top_base = 0, top_here = 0;
        for (size_t i = 0; i < nv; ++i) {
          kld += std::exp(double(base[i])) * (double(base[i]) - double(lp[i]));
          if (base[i] > base[top_base]) top_base = i;
          if (lp[i] > lp[top_here]) top_here = i;
        }
        kld_sum += kld;
        kld_sq += kld * kld;
        ++kld_count;
        top1_same += top_base == top_here;
      }
    }
    if (!json)
      std::fprintf(stderr, "[%d/%d] running perplexity %.4f\n", c + 1, n_chunks,
                   std::exp(total / double(count)));
  }
  const double ppl = std::exp(total / double(count));
  if (kld_out) kld_out->commit();
  const double kld_mean = kld_count ? kld_sum / double(kld_count) : 0;
  const double kld_err =
      kld_count > 1 ? std::sqrt(std::max(0.0, kld_sq / double(kld_count) - kld_mean * kld_mean) /
                                double(kld_count - 1))
                    : 0;
  const double top1 = kld_count ? 100.0 * double(top1_same) / double(kld_count) : 0;
  if (json) {
    boost::json::object o;
    o["perplexity"] = ppl;
    o["tokens_scored"] = count;
    o["chunks"] = n_chunks;
    o["ctx"] = ctx;
    o["path"] = reference ? "reference" : "opencl";
    if (kl_divergence) {
      o["kl_divergence_mean"] = kld_mean;
      o["kl_divergence_stderr"] = kld_err;
      o["top1_agreement_percent"] = top1;
    }
    if (setup) {
      const KvTokenBytes b = kv_token_bytes(setup->engine->model().kv_cache());
      o["kv_bytes_per_token"] = b.bytes;
      o["kv_f16_bytes_per_token"] = b.f16_bytes;
    }
    std::cout << boost::json::serialize(o) << "\n";
  } else {
    std::printf("perplexity: %.4f over %zu scored tokens (%d chunks of %d, %s path)\n", ppl, count,
                n_chunks, ctx, reference ? "reference" : "OpenCL");
    if (kl_divergence)
      std::printf(
          "KL divergence vs %s: mean %.6f +/- %.6f; top-1 agreement %.3f%% (%zu positions)\n",
          kld_base_path.c_str(), kld_mean, kld_err, top1, kld_count);
    if (kld_out) std::printf("saved the KL-divergence base to %s\n", kld_base_path.c_str());
  }
  return 0;
}

const CommandRegistrar kRegistrar("perplexity",
                                  "perplexity of a text file (llama-perplexity's scoring)",
                                  run_perplexity);

}  // namespace
}  // namespace tessera::cli
