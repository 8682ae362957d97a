// `tessera fixture --arch KIND -o FILE`: writes a tiny seeded random-weight model (for tests and
// for running llama.cpp on the same file).
#include <boost/program_options.hpp>

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
      "f32", po::bool_switch(&o.all_f32), "store every tensor as F32 instead of the quant mix")(
      "output-scale", po::value<float>(&o.output_scale)->default_value(8.0f), "std of logits")(
      "router-scale", po::value<float>(&o.router_scale)->default_value(8.0f),
      "std of router logits");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return 0;
  }
  po::notify(vm);
  model::make_fixture(o).write(out);
  std::printf("wrote %s fixture (seed %llu) to %s\n", o.kind.c_str(), (unsigned long long)o.seed,
              out.c_str());
  return 0;
}

const CommandRegistrar kRegistrar("fixture", "write a tiny random-weight model of an architecture",
                                  run_fixture);

}  // namespace
}  // namespace tessera::cli
