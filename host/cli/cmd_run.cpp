// `tessera run`: generates a continuation of a prompt and streams it, token by token, then prints a
// summary. `--reference` runs the scalar reference path (host/model/reference_model.h).
#include <boost/program_options.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "host/cli/command.h"
#include "host/engine/sampler.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"
#include "host/model/reference_model.h"

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
      throw std::runtime_error("--tokens: '" + item + "' is not a token id (expected e.g. 1,403,407)");
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
  bool reference = false, no_bos = false, ignore_eos = false;
  po::options_description opts(
      "tessera run --reference -m MODEL.gguf (--tokens IDS) [-n N] [sampling options]");
  opts.add_options()("help,h", "show this help")(
      "reference", po::bool_switch(&reference), "run the scalar reference path (single-threaded host code)")(
      "model,m", po::value<std::string>(&model_path)->required(), "GGUF model file")(
      "tokens", po::value<std::string>(&tokens), "prompt as comma-separated token ids, e.g. 1,403,407")(
      "n-predict,n", po::value<int>(&n_predict)->default_value(32), "tokens to generate")(
      "temp", po::value<float>(&sc.temperature)->default_value(0.0f), "temperature; 0 = greedy")(
      "top-k", po::value<int>(&sc.top_k)->default_value(0), "keep the k most likely tokens (0 = all)")(
      "top-p", po::value<float>(&sc.top_p)->default_value(1.0f), "nucleus probability mass (1 = all)")(
      "seed", po::value<uint64_t>(&sc.seed)->default_value(0), "sampling seed")(
      "no-bos", po::bool_switch(&no_bos), "do not prepend the BOS token")(
      "ignore-eos", po::bool_switch(&ignore_eos), "keep generating after an end-of-generation token")(
      "logits-out", po::value<std::string>(&logits_path),
      "write each step's logits (n_vocab float32, native byte order) to this file, for comparisons");
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
  if (tokens.empty()) throw std::runtime_error("give the prompt with --tokens 1,2,3");

  const auto file = gguf::GgufFile::open(model_path);
  const auto spec = model::ModelSpec::from_gguf(file);
  const model::ReferenceModel net(spec);
  engine::Sampler sampler(sc);

  std::vector<int32_t> prompt_ids;
  if (!no_bos) {
    if (const gguf::Value* bos = file.find("tokenizer.ggml.bos_token_id")) prompt_ids.push_back(int32_t(bos->as_uint()));
  }
  for (int32_t id : parse_token_list(tokens)) prompt_ids.push_back(id);
  for (int32_t id : prompt_ids) {
    if (id < 0 || uint32_t(id) >= spec.hp.n_vocab) {
      throw std::runtime_error("prompt token " + std::to_string(id) + " is outside the vocabulary of " +
                               std::to_string(spec.hp.n_vocab));
    }
  }
  const int64_t eos = file.find("tokenizer.ggml.eos_token_id") ? int64_t(file.get_u32("tokenizer.ggml.eos_token_id")) : -1;
  if (prompt_ids.size() + size_t(n_predict) > spec.hp.n_ctx_train) {
    throw std::runtime_error("prompt (" + std::to_string(prompt_ids.size()) + ") + -n " + std::to_string(n_predict) +
                             " exceeds the model's context length " + std::to_string(spec.hp.n_ctx_train));
  }

  model::KvState kv = net.new_kv_state();
  std::vector<int32_t> positions(prompt_ids.size());
  for (size_t i = 0; i < positions.size(); ++i) positions[i] = int32_t(i);

  const auto t0 = Clock::now();
  std::vector<float> logits = net.forward(prompt_ids, positions, kv);
  const auto t1 = Clock::now();
  std::unique_ptr<FILE, int (*)(FILE*)> logits_file(nullptr, &std::fclose);
  if (!logits_path.empty()) {
    logits_file.reset(std::fopen(logits_path.c_str(), "wb"));
    if (!logits_file) throw std::runtime_error("--logits-out: cannot open '" + logits_path + "' for writing");
  }
  int generated = 0;
  for (int i = 0; i < n_predict; ++i) {
    if (logits_file && std::fwrite(logits.data(), sizeof(float), logits.size(), logits_file.get()) != logits.size()) {
      throw std::runtime_error("--logits-out: write to '" + logits_path + "' failed");
    }
    const int32_t next = sampler.sample(logits);
    std::printf("%s%d", i ? " " : "", next);
    std::fflush(stdout);
    ++generated;
    if (next == eos && !ignore_eos) break;
    if (i + 1 == n_predict) break;
    const int32_t pos = int32_t(kv.n_past);
    logits = net.forward(std::span<const int32_t>(&next, 1), std::span<const int32_t>(&pos, 1), kv);
  }
  const auto t2 = Clock::now();
  std::printf("\n");
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::fprintf(stderr,
               "prompt tokens: %zu, generated tokens: %d, prefill %.3f s (%.1f tokens/s), "
               "generation %.3f s (%.1f tokens/s), total %.3f s\n",
               prompt_ids.size(), generated, prefill_s, double(prompt_ids.size()) / prefill_s, decode_s,
               generated > 0 ? double(generated) / decode_s : 0.0, prefill_s + decode_s);
  return 0;
}

const CommandRegistrar kRegistrar("run", "generate text from a prompt (--reference: scalar host path)", run_generate);

}  // namespace
}  // namespace tessera::cli
