// `tessera plan -m MODEL [--config FILE] [--set KEY=VALUE]...`: the placement a config gives a
// model on this machine's devices: layers and experts per device, bytes, predicted time per device.
#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "devices/probes.h"
#include "host/cli/command.h"
#include "host/cli/settings.h"
#include "host/engine/opencl_model.h"
#include "host/engine/planning.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"

namespace tessera::cli {
namespace {

namespace po = boost::program_options;

// Decode launches of one token the prediction counts: the embedding, output, each layer's dense
// part and its experts on each device that serves any.
int total_launches(const sched::Plan& plan, const sched::ModelFootprint& f) {
  int n = f.embedding_launches + f.output_launches;
  for (size_t l = 0; l < f.layers.size(); ++l) {
    n += f.layers[l].dense_launches;
    if (f.layers[l].n_experts == 0) continue;
    std::vector<bool> serves(plan.devices.size());
    for (int d : plan.expert_device[l]) serves[size_t(d)] = true;
    n += f.layers[l].expert_launches * int(std::count(serves.begin(), serves.end(), true));
  }
  return n;
}

int run_plan(const std::vector<std::string>& args) {
  std::string model_path, config_path, device;
  std::vector<std::string> sets;
  int context = 4096;
  bool json = false, no_measure = false;
  po::options_description opts("tessera plan -m MODEL.gguf [--config FILE] [--set KEY=VALUE]...");
  opts.add_options()("help,h", "show this help")(
      "model,m", po::value<std::string>(&model_path)->required(), "GGUF model file")(
      "config", po::value<std::string>(&config_path),
      "device-selection config (YAML; see configs/README.md)")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(),
      "override a config key, e.g. --set placement.attention=gpu0")(
      "device", po::value<std::string>(&device), "use this one device only (e.g. cpu0)")(
      "ctx", po::value<int>(&context)->default_value(4096),
      "context tokens to reserve KV cache for")(
      "no-measure", po::bool_switch(&no_measure),
      "plan with default device figures instead of probes")("json", po::bool_switch(&json),
                                                            "print the plan as JSON");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (context < 1) throw std::runtime_error("--ctx must be >= 1");
  const auto config = engine::config_from_cli(config_path, sets, device);
  const auto file = gguf::GgufFile::open(model_path);
  const auto spec = model::ModelSpec::from_gguf(file);
  auto registry = tessera::cli::discover_devices();
  ProbeCache probes = tessera::cli::probe_cache();
  auto footprint = engine::footprint_of(
      spec, context, engine::kv_formats_of(config, int(spec.layers.size()), spec.hp.head_dim));
  footprint.max_sequences = config.max_sequences.value_or(1);  // recurrent state reserved
  // Launch prices and counts are kept per engine switches ($TESSERA_NO_FUSE, $TESSERA_FUSE).
  engine::EngineOptions switches;
  engine::apply_no_fuse(settings().no_fuse, switches);
  engine::apply_fuse(settings().fuse, switches);
  const std::string fusion_key = engine::switches_key(switches);
  auto plan =
      engine::plan_for(registry, config, footprint, no_measure ? nullptr : &probes, fusion_key);
  // The launches an engine of this model counted here, where one ran: the prediction with them.
  const bool counted = !no_measure && engine::launch_counts_from_cache(registry, probes, plan,
                                                                       footprint, fusion_key);
  if (counted) sched::predict(plan, footprint);
  if (json) {
    std::cout << plan.to_json() << "\n";
  } else {
    std::printf("model: %s (%s, %u layers, %u experts, top-%u)\n", model_path.c_str(),
                std::string(spec.arch->name).c_str(), spec.hp.n_layer, spec.hp.n_expert,
                spec.hp.n_expert_used);
    std::cout << plan.to_text(footprint);
    std::printf(counted ? "launches per token as an engine of this model counted them here: %d\n"
                        : "launches per token: %d (defaults; an engine of this model has not run "
                          "here with these devices)\n",
                total_launches(plan, footprint));
  }
  return 0;
}

const CommandRegistrar kRegistrar("plan", "show where a config places a model's layers and experts",
                                  run_plan);

}  // namespace
}  // namespace tessera::cli
