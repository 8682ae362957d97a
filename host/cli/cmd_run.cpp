// `tessera run`: generates a continuation of a prompt and streams it, token by token, then prints a
// summary. `--reference` runs the scalar reference path (host/model/reference_model.h).
#include <boost/program_options.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "host/cli/command.h"
#include "host/engine/sampler.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"
#include "host/model/reference_model.h"
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

int run_generate(const std::vector<std::string>& args) {
  std::string model_path, prompt, tokens, logits_path;
  int n_predict = 32;
  engine::SamplerConfig sc;
  bool reference = false, no_bos = false, ignore_eos = false, print_ids = false;
  po::options_description opts(
      "tessera run --reference -m MODEL.gguf (-p TEXT | --tokens IDS) [-n N] [sampling options]");
  opts.add_options()("help,h", "show this help")(
      "reference", po::bool_switch(&reference),
      "run the scalar reference path (single-threaded host code)")(
      "model,m", po::value<std::string>(&model_path)->required(), "GGUF model file")(
      "prompt,p", po::value<std::string>(&prompt), "prompt text")(
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
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return 0;
  }
  po::notify(vm);
  if (!reference) {
    throw std::runtime_error("only the reference path exists so far: pass --reference");
  }
  if (n_predict < 0) throw std::runtime_error("-n must be >= 0");
  if (vm.count("prompt") == vm.count("tokens")) {
    throw std::runtime_error(
        "give the prompt either as text (-p TEXT) or as ids (--tokens 1,2,3), not both or neither");
  }

  const auto file = gguf::GgufFile::open(model_path);
  const auto spec = model::ModelSpec::from_gguf(file);
  const model::ReferenceModel net(spec);
  engine::Sampler sampler(sc);
  // A model without tokenizer metadata can still run from ids (and print ids).
  std::optional<tokenizer::Tokenizer> tok;
  if (file.find("tokenizer.ggml.model")) {
    tok.emplace(tokenizer::Tokenizer::from_gguf(file));
  } else if (vm.count("prompt")) {
    throw std::runtime_error(
        model_path + ": no tokenizer metadata (tokenizer.ggml.model); use --tokens and --ids");
  }
  if (!tok) print_ids = true;

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
  std::unique_ptr<FILE, int (*)(FILE*)> logits_file(nullptr, &std::fclose);
  if (!logits_path.empty()) {
    logits_file.reset(std::fopen(logits_path.c_str(), "wb"));
    if (!logits_file)
      throw std::runtime_error("--logits-out: cannot open '" + logits_path + "' for writing");
  }

  model::KvState kv = net.new_kv_state();
  std::vector<int32_t> positions(prompt_ids.size());
  for (size_t i = 0; i < positions.size(); ++i) positions[i] = int32_t(i);

  const auto t0 = Clock::now();
  std::vector<float> logits = net.forward(prompt_ids, positions, kv);
  const auto t1 = Clock::now();
  int generated = 0;
  for (int i = 0; i < n_predict; ++i) {
    if (logits_file && std::fwrite(logits.data(), sizeof(float), logits.size(),
                                   logits_file.get()) != logits.size()) {
      throw std::runtime_error("--logits-out: write to '" + logits_path + "' failed");
    }
    const int32_t next = sampler.sample(logits);
    ++generated;
    const bool end = tok ? tok->is_eog(next) : false;
    if (print_ids) {
      std::printf("%s%d", i ? " " : "", next);
    } else if (!end) {
      const std::string piece = tok->token_to_piece(next, false);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
    }
    std::fflush(stdout);
    if (end && !ignore_eos) break;
    if (i + 1 == n_predict) break;
    const int32_t pos = int32_t(kv.n_past);
    logits = net.forward(std::span<const int32_t>(&next, 1), std::span<const int32_t>(&pos, 1), kv);
  }
  const auto t2 = Clock::now();
  std::printf("\n");
  std::fflush(stdout);
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr,
               "prompt tokens: %zu, generated tokens: %d, prefill %.3f s (%.1f tokens/s), "
               "generation %.3f s (%.1f tokens/s), total %.3f s\n",
               prompt_ids.size(), generated, prefill_s, double(prompt_ids.size()) / prefill_s,
               decode_s, generated > 0 ? double(generated) / decode_s : 0.0, prefill_s + decode_s);
  return 0;
}

const CommandRegistrar kRegistrar("run",
                                  "generate text from a prompt (--reference: scalar host path)",
                                  run_generate);

}  // namespace
}  // namespace tessera::cli
