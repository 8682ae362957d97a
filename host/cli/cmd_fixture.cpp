// `tessera fixture --arch KIND -o FILE`: writes a seeded random-weight model (tiny for tests, or
// benchmark-sized with the size flags) to run Tessera and llama.cpp on the same file.
#include <boost/program_options.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "host/cli/command.h"
#include "host/model/fixtures.h"

namespace tessera::cli {
namespace {

namespace po = boost::program_options;

int run_fixture(const std::vector<std::string>& args) {
  std::string kinds;
  for (const auto& k : model::fixture_kinds()) kinds += (kinds.empty() ? "" : ", ") + k;
  model::FixtureOptions o;
  std::string out;
  po::options_description opts("tessera fixture --arch KIND -o FILE [options]");
  opts.add_options()("help,h", "show this help")(
      "arch,a", po::value<std::string>(&o.kind)->required(), ("fixture kind: " + kinds).c_str())(
      "output,o", po::value<std::string>(&out)->required(), "GGUF file to write")(
      "seed,s", po::value<uint64_t>(&o.seed)->default_value(1), "weight seed")(
      "tie-output", po::bool_switch(&o.tie_output), "omit output.weight (tied to token_embd)")(
      "rope-scaling", po::bool_switch(&o.rope_scaling),
      "linear RoPE scaling x2 (+ rope_freqs.weight for llama kinds)")(
      "rope-freqs", po::bool_switch(&o.rope_freqs),
      "Llama 3-style rope_freqs.weight divisors alone (llama kinds)")(
      "rope-yarn", po::bool_switch(&o.rope_yarn),
      "YaRN RoPE scaling x4 over an original context of 16 tokens")(
      "f32", po::bool_switch(&o.all_f32), "store every tensor as F32 instead of the quant mix")(
      "fused-ssm-in", po::bool_switch(&o.fused_ssm_in),
      "qwen3next: write q|k|v and z as the one ssm_in of llama.cpp's first converter")(
      "harmony", po::bool_switch(&o.harmony),
      "gpt-oss: add the harmony special tokens and a harmony chat template")(
      "window", po::value<uint32_t>(&o.window)->default_value(0),
      "sliding-window attention of N tokens on even layers, full on odd ones (0: none; llama.cpp "
      "ignores it for these architectures)")(
      "output-scale", po::value<float>(&o.output_scale)->default_value(8.0f), "std of logits")(
      "router-scale", po::value<float>(&o.router_scale)->default_value(8.0f),
      "std of router logits")(
      "weight-type", po::value<std::string>(&o.weight_type),
      "store every matrix as Q4_0 or Q8_0, or the experts as MXFP4 and the rest Q8_0 (benchmark "
      "models; fast generator)")("n-layer", po::value<uint32_t>(&o.n_layer),
                                 "layers (default: the kind's tiny size)")(
      "n-embd", po::value<uint32_t>(&o.n_embd), "hidden size")(
      "n-head", po::value<uint32_t>(&o.n_head), "query heads")(
      "n-head-kv", po::value<uint32_t>(&o.n_head_kv), "key/value heads")(
      "head-dim", po::value<uint32_t>(&o.head_dim), "head dimension")(
      "n-ff", po::value<uint32_t>(&o.n_ff), "dense FFN width")(
      "n-expert", po::value<uint32_t>(&o.n_expert), "routed experts per layer")(
      "n-expert-used", po::value<uint32_t>(&o.n_expert_used), "experts chosen per token")(
      "n-ff-exp", po::value<uint32_t>(&o.n_ff_exp), "expert FFN width (qwen3moe)")(
      "n-ctx", po::value<uint32_t>(&o.n_ctx), "training context length (metadata)")(
      "attn-period", po::value<uint32_t>(&o.attn_period),
      "granitehybrid: attention every N layers, Mamba2 in the others (default 3); qwen3next: "
      "full_attention_interval, gated attention at layers N-1, 2N-1, ... (default 4)")(
      "n-vocab", po::value<uint32_t>(&o.n_vocab),
      "pad the vocabulary to this many tokens (bigger embedding and output head)");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  model::make_fixture(o).write(out);
  std::printf("wrote %s fixture (seed %llu) to %s in %.1f s\n", o.kind.c_str(),
              (unsigned long long)o.seed, out.c_str(),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return 0;
}

const CommandRegistrar kRegistrar("fixture", "write a tiny random-weight model of an architecture",
                                  run_fixture);

}  // namespace
}  // namespace tessera::cli
