// From devices and a config to a Plan: the planner's inputs measured or read off the devices.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "devices/device.h"
#include "devices/probes.h"
#include "host/engine/engine.h"
#include "host/model/model_spec.h"
#include "scheduler/config.h"
#include "scheduler/planner.h"

namespace tessera::engine {

// The planner's view of `device`: probe figures when given (else conservative defaults by device
// type) and the budget the config sets (default 90% of the device's memory).
sched::DeviceCost device_cost(const Device& device, const ProbeResult* probe,
                              const sched::Config& config);

// The KV cache formats of `n_layer` layers from the config's kv_cache keys: format (K and V),
// k_format / v_format, then layers.<range> overrides. A TurboQuant K or V format keeps q8_0 in
// layers 0 and n_layer - 1 (f16 when q8_0 cannot store head_dim; head_dim 0: q8_0) unless a
// layers.<range> key names them. Throws sched::ConfigError naming the key for a format name the
// engine does not store, a range past the model's layers, or a layer two ranges name. n_layer 0
// checks the names only.
KvLayerFormats kv_formats_of(const sched::Config& config, int n_layer, uint32_t head_dim = 0);

// Selects devices by `config`, measures them through `probes` (cached; nullptr: no measurement)
// and plans `footprint` on them. With `probes`, each device's weight streaming rate
// (DeviceCost::weight_gbps) is also measured: its one-token matmul kernel in the footprint's
// weight_type over rows of n_embd (once per process and device, and kept in `probes`' directory
// under weight_rate_key).
// The key of a device's weight streaming rate for `footprint` in the probe cache: its weight
// format and row length, the synthetic matrix's size, and a hash of the matmul kernels' source and
// of the programs' extra build options (ProgramCache::program_options_key) where set.
std::string weight_rate_key(const Device& device, const sched::ModelFootprint& footprint);

// The key of a device's calibrated decode launch price for `footprint` in the probe cache
// (ProbeCache::load_launch_us; OpenClModel measures it): the weight format, row length, layers and
// experts, a hash of the engine's kernel sources and of the programs' extra build options where
// set, and the engine's switches that differ from their defaults (`switches`: switches_key) where
// any do, since they change which launches a step makes. plan_for prices the device's launches at
// it where cached.
std::string launch_price_key(const Device& device, const sched::ModelFootprint& footprint,
                             const std::string& switches = "");
// The launch counts an engine of the model counted (OpenClModel, with launch_prices), kept per
// device under launch_price_key + "|launches ...": each layer's dense launches on the device that
// ran it with its experts at home, and those experts' launches; the embedding's and the output's on
// the attention device. Sets `footprint`'s counts for `plan`'s placement from them and returns
// true when every count the placement needs is kept (a layer's experts: those of the device that
// serves most of them); else leaves `footprint` as it was and returns false. `tessera plan`
// plans before any engine is built, with the footprint's default counts otherwise.
bool launch_counts_from_cache(const DeviceRegistry& registry, const ProbeCache& cache,
                              const sched::Plan& plan, sched::ModelFootprint& footprint,
                              const std::string& switches = "");
sched::Plan plan_for(const DeviceRegistry& registry, const sched::Config& config,
                     const sched::ModelFootprint& footprint, const ProbeCache* probes,
                     const std::string& switches = "");

// KV-cache blocks (of `block_size` tokens) the engine may allocate under the config's
// kv_cache.budget, the KV bytes the plan reserved: the budget caps the cache, it is not only shown
// by `tessera plan`. Returns `wanted_blocks` when the config sets no budget, else the smaller of
// the two. Throws sched::ConfigError naming kv_cache.budget when the budget holds fewer than
// `needed_tokens` tokens per sequence for `sequences` sequences.
int kv_blocks_within_budget(const sched::Config& config, const sched::Plan& plan,
                            const sched::ModelFootprint& footprint, int block_size,
                            int wanted_blocks, int sequences, int needed_tokens);

// Leaves out of `config`'s selection (adds to devices.exclude) every device whose OpenCL compiler
// cannot build the engine's programs, with a warning naming the device and the build error, unless
// the config names that device (devices.select by id or name, placement.attention, expert shares
// or pins): then nothing is skipped and the error surfaces when the engine builds. setup_engine
// (run, bench, perplexity) calls it before plan_for.
void skip_unbuildable_devices(const DeviceRegistry& registry, sched::Config& config);

// The config the command line describes: a YAML file (optional), then `--set KEY=VALUE` overrides,
// then `--device ID` (shorthand for selecting that one device). Throws sched::ConfigError.
sched::Config config_from_cli(const std::string& config_path, const std::vector<std::string>& sets,
                              const std::string& device);

// What `tessera run`, `bench` and `perplexity` say about the engine they want: the command line's
// config, its own defaults for the step limits (a config's batching.* keys override them) and
// the context it needs.
struct EngineSetupOptions {
  std::string config_path;        // YAML config file ("" for none)
  std::vector<std::string> sets;  // --set KEY=VALUE overrides
  std::string device;             // --device ID
  int context_tokens = 256;       // KV positions per sequence (planned and allocated)
  int max_sequences = 1;          // defaults of the command; batching.max_sequences overrides
  int max_batch_tokens = 256;     // batching.max_batch_tokens overrides
  int prefill_chunk = 0;          // batching.prefill_chunk overrides; 0: max_batch_tokens
  bool all_logits = false;        // a step may return a logit row per token (scoring)
  bool balancer = false;          // --balancer
  bool config_balancer = true;    // also on when a config file (--config) enables it
  bool profile = false;           // time every launch (device time per op family)
  bool replay = true;             // replay recorded step programs (EngineOptions::replay)
  bool probe = true;              // measure the devices (cached) for the planner
  // Where programs and probe results are cached (the CLI's settings, host/cli/settings.h): null /
  // empty for in-memory programs and unstored probes. The engine reads no environment.
  std::shared_ptr<ProgramCache> programs;
  std::filesystem::path probe_dir;
  std::string no_fuse;         // fusions to switch off (apply_no_fuse; the CLI's $TESSERA_NO_FUSE)
  std::string fuse;            // opt-in fusions to switch on (apply_fuse; the CLI's $TESSERA_FUSE)
  DeviceLimits device_limits;  // the CLI's TESSERA_DEVICE_LIMITS (default: the devices' own)
  std::function<void(uint64_t, uint64_t)> progress;  // weight upload progress
};

// An engine and what it runs on; destroy in member order reversed (engine before registry).
struct EngineSetup {
  std::unique_ptr<DeviceRegistry> registry;
  sched::Config config;
  sched::ModelFootprint footprint;
  std::unique_ptr<Engine> engine;
  double load_seconds = 0;  // weight upload and KV allocation
  const sched::Plan& plan() const { return engine->model().plan(); }
};

// Discovers devices, reads the config, leaves out devices that cannot build the engine's programs
// (skip_unbuildable_devices), plans `spec` (whose GgufFile must outlive the engine) and
// builds the model and its engine. Throws sched::ConfigError / PlanError / ClError.
EngineSetup setup_engine(const model::ModelSpec& spec, const EngineSetupOptions& options);

}  // namespace tessera::engine
