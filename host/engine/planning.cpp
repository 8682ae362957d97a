// Device costs for the planner and the end-to-end plan_for().
#include "host/engine/planning.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "devices/program_cache.h"
#include "devices/sha256.h"
#include "host/ops/device/matmul.h"
#include "host/ops/device/matmul_check.h"

namespace tessera::engine {

namespace {

bool names_device(const sched::Config& c, const DeviceInfo& d) {
  for (const auto& s : c.select)
    if ((s.id || s.name) && s.matches(d)) return true;
  if (c.attention == d.id || c.expert_shares.count(d.id)) return true;
  return std::any_of(c.expert_pins.begin(), c.expert_pins.end(),
                     [&](const sched::ExpertPin& p) { return p.device == d.id; });
}

// "" when the device builds the programs every engine uses (the attention program's options
// depend on the model and are built by the engine), else the first build error.
std::string program_build_problem(const Device& device) {
  try {
    for (const char* program :
         {"norm", "softmax", "elementwise", "act", "rope", "route", "moe", "embed"})
      device.program(program);
    ops::MatmulOp matmul(device);
    matmul.variant(gguf::TensorType::F32);
    matmul.variant(gguf::TensorType::Q8_0);
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

// Every weight byte of the model: dense parts, all experts, embedding and output head.
uint64_t weight_bytes(const sched::ModelFootprint& f) {
  uint64_t b = f.embedding_bytes + f.output_bytes;
  for (const auto& l : f.layers) b += l.dense_bytes + uint64_t(l.n_experts) * l.expert_bytes;
  return b;
}

// The synthetic matrix's bytes for a model of `model_bytes`: as large as the model's weights within
// 16-256 MiB and the device's allocation limit, so it stays in the caches as much as the model
// does (2-core machine, 504 MiB L3, the 492 MiB peer model's Q4_0: 16 MiB measured 8.3-12.6 GB/s,
// 256 MiB 6.2-6.8 GB/s, what the engine's decode reaches).
uint64_t weight_rate_bytes(const DeviceInfo& info, uint64_t model_bytes) {
  return std::min<uint64_t>({std::max<uint64_t>(model_bytes, 16ull << 20), 256ull << 20,
                             info.max_alloc_bytes / 2, info.global_mem_bytes / 8});
}

// The device's weight streaming rate for the planner (DeviceCost::weight_gbps): its one-token
// matmul kernel over a synthetic matrix of the model's main format and row length
// (weight_rate_bytes; about a second on the 2-core machine). Remembered per process and in
// `cache` (on disk, keyed by weight_rate_key: a changed matmul kernel is measured again); 0 when
// the kernel cannot run there (the planner then takes the read probe's figure).
double weight_stream_gbps(const Device& device, const sched::ModelFootprint& footprint,
                          const ProbeCache* cache) {
  static std::mutex mu;
  static std::map<std::string, double> measured;
  const auto& info = device.info();
  const auto type = gguf::TensorType(footprint.weight_type);
  const auto cols = int64_t(footprint.n_embd);
  const uint64_t bytes = weight_rate_bytes(info, weight_bytes(footprint));
  const std::string key = weight_rate_key(device, footprint);
  const std::string memo_key = info.id + "|" + info.name + "|" + key;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = measured.find(memo_key); it != measured.end()) {
    if (cache && it->second > 0 && !cache->load_rate(info, key))
      cache->store_rate(info, key, it->second);  // a cache this process has not filled yet
    return it->second;
  }
  if (cache)
    if (const auto cached = cache->load_rate(info, key)) return measured[memo_key] = *cached;
  double gbps = 0;
  try {
    ops::MatmulOp op(device);
    gbps = ops::measure_weight_stream_gbps(op, type, cols, bytes);
    if (!std::isfinite(gbps) || gbps <= 0) gbps = 0;
    spdlog::info("{}: {} weights stream at {:.1f} GB/s (one-token matmul, rows of {}, {} MiB)",
                 info.id, gguf::type_name(type), gbps, cols, bytes >> 20);
    if (gbps > 0 && cache) cache->store_rate(info, key, gbps);
  } catch (const std::exception& e) {
    spdlog::warn("{}: weight streaming rate not measured ({}); the planner uses the read probe",
                 info.id, e.what());
  }
  measured[memo_key] = gbps;
  return gbps;
}

// "|options HASH" for the programs' extra build options ($TESSERA_MATMUL_OPTIONS), where set.
std::string options_suffix(const Device& device) {
  const std::string options = device.programs().program_options_key();
  return options.empty() ? "" : "|options " + Sha256::hex(options).substr(0, 16);
}

}  // namespace

std::string weight_rate_key(const Device& device, const sched::ModelFootprint& footprint) {
  const std::string source = device.programs().sources().resolve("matmul");
  return "weights|" + std::string(gguf::type_name(gguf::TensorType(footprint.weight_type))) + "|" +
         std::to_string(footprint.n_embd) + "|" +
         std::to_string(weight_rate_bytes(device.info(), weight_bytes(footprint))) + "|matmul " +
         Sha256::hex(source).substr(0, 16) + options_suffix(device);
}

std::string launch_price_key(const Device& device, const sched::ModelFootprint& footprint,
                             const std::string& switches) {
  std::string sources;
  const KernelSources& all = device.programs().sources();
  for (const auto& program : all.program_names()) sources += all.resolve(program);
  int experts = 0;
  for (const auto& l : footprint.layers) experts = std::max(experts, l.n_experts);
  return "decode_launch_us|" +
         std::string(gguf::type_name(gguf::TensorType(footprint.weight_type))) + "|" +
         std::to_string(footprint.n_embd) + "|" + std::to_string(footprint.layers.size()) + "|" +
         std::to_string(experts) + "x" + std::to_string(footprint.n_expert_used) + "|kernels " +
         Sha256::hex(sources).substr(0, 16) + options_suffix(device) +
         (switches.empty() ? "" : "|switches " + switches);
}

bool launch_counts_from_cache(const DeviceRegistry& registry, const ProbeCache& cache,
                              const sched::Plan& plan, sched::ModelFootprint& footprint,
                              const std::string& switches) {
  std::vector<std::string> keys;
  for (const auto& d : plan.devices)
    keys.push_back(launch_price_key(registry.get(d.id), footprint, switches) + "|launches ");
  auto count = [&](int d, const std::string& what) {
    const auto v = cache.load_launch_us(registry.get(plan.devices[size_t(d)].id).info(),
                                        keys[size_t(d)] + what);
    return v ? int(std::lround(*v)) : 0;
  };
  sched::ModelFootprint counted = footprint;
  const int home = plan.attention_device;
  counted.embedding_launches = count(home, "embedding");
  counted.output_launches = count(home, "output");
  if (counted.embedding_launches <= 0 || counted.output_launches <= 0) return false;
  for (size_t l = 0; l < counted.layers.size(); ++l) {
    auto& fl = counted.layers[l];
    const std::string layer = " " + std::to_string(l);
    fl.dense_launches = count(plan.layer_device[l], "dense" + layer);
    if (fl.dense_launches <= 0) return false;
    if (fl.n_experts == 0) continue;
    std::vector<int> served(plan.devices.size());
    for (int d : plan.expert_device[l]) ++served[size_t(d)];
    const int most = int(std::max_element(served.begin(), served.end()) - served.begin());
    fl.expert_launches = count(most, "expert" + layer);
    if (fl.expert_launches <= 0) return false;
  }
  footprint = std::move(counted);
  return true;
}

void skip_unbuildable_devices(const DeviceRegistry& registry, sched::Config& config) {
  std::vector<DeviceInfo> infos;
  for (const auto& d : registry.devices()) infos.push_back(d->info());
  for (const DeviceInfo* info : config.select_devices(infos)) {
    if (names_device(config, *info)) continue;
    const std::string problem = program_build_problem(registry.get(info->id));
    if (problem.empty()) continue;
    spdlog::warn(
        "skipping {}: its OpenCL compiler cannot build Tessera's programs ({}); name it in "
        "the config (devices.select id) to use it anyway",
        info->label(), problem.substr(0, problem.find('\n')));
    sched::DeviceSelector s;
    s.id = info->id;
    config.exclude.push_back(s);
  }
}

sched::DeviceCost device_cost(const Device& device, const ProbeResult* probe,
                              const sched::Config& config) {
  const auto& info = device.info();
  sched::DeviceCost c;
  c.id = info.id;
  c.type = info.type;
  c.memory_bytes = info.global_mem_bytes;
  if (probe) {
    c.read_gbps = probe->read_gbps;
    c.fp32_gflops = probe->fp32_gflops;
    c.launch_us = c.probe_launch_us = probe->launch_stream_us;
    c.sync_us = probe->launch_latency_us;
    c.h2d_gbps = probe->h2d_gbps;
    c.d2h_gbps = probe->d2h_gbps;
  } else {
    // Unmeasured: rough defaults by type, so plans still prefer GPUs for bandwidth.
    const bool gpu = info.type == DeviceType::kGpu;
    c.read_gbps = gpu ? 500 : 20;
    c.fp32_gflops = gpu ? 10000 : 100;
    c.launch_us = gpu ? 10 : 20;
    c.sync_us = gpu ? 20 : 50;
    c.h2d_gbps = c.d2h_gbps = gpu ? 10 : 10;
  }
  auto it = config.budgets.find(info.id);
  c.budget_bytes = it != config.budgets.end() ? it->second.resolve(info.global_mem_bytes)
                                              : uint64_t(double(info.global_mem_bytes) * 0.9);
  return c;
}

KvLayerFormats kv_formats_of(const sched::Config& config, int n_layer, uint32_t head_dim) {
  auto format = [](const std::string& name, const std::string& key, bool value = false) {
    const auto f = kv::kv_format_from_name(name);
    if (!f)
      throw sched::ConfigError(
          key + ": '" + name +
          "' is not implemented by the engine yet; supported now: " + kv::kv_format_names());
    if (const std::string why = kv::kv_format_value_problem(*f); value && !why.empty())
      throw sched::ConfigError(key + " (V): " + why);
    return *f;
  };
  const kv::KvFormat k =
      format(config.kv_k_format.empty() ? config.kv_format : config.kv_k_format,
             config.kv_k_format.empty() ? "kv_cache.format" : "kv_cache.k_format");
  const kv::KvFormat v =
      format(config.kv_v_format.empty() ? config.kv_format : config.kv_v_format,
             config.kv_v_format.empty() ? "kv_cache.format" : "kv_cache.v_format", true);
  KvLayerFormats out;
  out.k.assign(size_t(std::max(0, n_layer)), k);
  out.v.assign(size_t(std::max(0, n_layer)), v);
  // A TurboQuant part keeps q8_0 (f16 where q8_0 cannot store the head size) in the first and the
  // last layer, the most sensitive ones; kv_cache.layers.<range> below overrides that.
  const kv::KvFormat boundary =
      head_dim == 0 || kv::kv_bytes_per_token_head(kv::KvFormat::kQ8_0, head_dim) != 0
          ? kv::KvFormat::kQ8_0
          : kv::KvFormat::kF16;
  for (std::vector<kv::KvFormat>* part : {&out.k, &out.v})
    if (!part->empty() && kv::kv_format_traits(part->front()).turbo())
      part->front() = part->back() = boundary;
  std::vector<std::string> owner(size_t(std::max(0, n_layer)));  // range that set each layer
  for (const auto& [range, lf] : config.kv_layers) {
    const std::string key = "kv_cache.layers." + range;
    const bool has_k = !lf.k_format.empty(), has_v = !lf.v_format.empty();
    const kv::KvFormat lk = has_k ? format(lf.k_format, key) : kv::KvFormat::kF16;
    const kv::KvFormat lv = has_v ? format(lf.v_format, key, true) : kv::KvFormat::kF16;
    if (n_layer <= 0) continue;  // names only
    const int last = lf.last < 0 ? n_layer - 1 : lf.last;
    if (lf.first >= n_layer || last >= n_layer)
      throw sched::ConfigError(key + ": the model has layers 0-" + std::to_string(n_layer - 1));
    for (int l = lf.first; l <= last; ++l) {
      if (!owner[size_t(l)].empty())
        throw sched::ConfigError(key + ": layer " + std::to_string(l) +
                                 " is also in kv_cache.layers." + owner[size_t(l)]);
      owner[size_t(l)] = range;
      if (has_k) out.k[size_t(l)] = lk;
      if (has_v) out.v[size_t(l)] = lv;
    }
  }
  return out;
}

sched::Plan plan_for(const DeviceRegistry& registry, const sched::Config& config,
                     const sched::ModelFootprint& footprint, const ProbeCache* probes,
                     const std::string& switches) {
  // The config schema names every planned KV format; refuse those the engine does not store yet
  // rather than silently running a different format than the one asked for.
  kv_formats_of(config, 0);
  std::vector<DeviceInfo> infos;
  for (const auto& d : registry.devices()) infos.push_back(d->info());
  std::vector<sched::DeviceCost> costs;
  for (const DeviceInfo* info : config.select_devices(infos)) {
    const Device& dev = registry.get(info->id);
    if (probes) {
      const ProbeResult r = probes->get(dev, false);
      costs.push_back(device_cost(dev, &r, config));
      if (footprint.weight_type >= 0 && footprint.n_embd > 0) {
        costs.back().weight_gbps = weight_stream_gbps(dev, footprint, probes);
        // What this device's decode launches cost, as an engine of this model measured them.
        if (const auto us =
                probes->load_launch_us(*info, launch_price_key(dev, footprint, switches)))
          costs.back().launch_us = *us;
      }
    } else {
      costs.push_back(device_cost(dev, nullptr, config));
    }
  }
  return sched::make_plan(footprint, costs, config);
}

int kv_blocks_within_budget(const sched::Config& config, const sched::Plan& plan,
                            const sched::ModelFootprint& footprint, int block_size,
                            int wanted_blocks, int sequences, int needed_tokens) {
  if (!config.kv_budget) return wanted_blocks;
  uint64_t budget = 0;
  for (uint64_t b : plan.kv_bytes) budget += b;  // the planner's resolved kv_cache.budget
  const uint64_t block_bytes = footprint.kv_bytes_per_token * uint64_t(std::max(1, block_size));
  const uint64_t blocks = block_bytes ? budget / block_bytes : uint64_t(wanted_blocks);
  const uint64_t blocks_per_seq =
      uint64_t((std::max(0, needed_tokens) + block_size - 1) / block_size);
  const uint64_t needed = blocks_per_seq * uint64_t(std::max(1, sequences));
  if (blocks < needed)
    throw sched::ConfigError(
        "kv_cache.budget: " + sched::format_bytes(budget) + " holds " +
        std::to_string(blocks * uint64_t(block_size)) + " tokens of KV cache (" +
        sched::format_bytes(footprint.kv_bytes_per_token) + " per token); this run needs " +
        std::to_string(blocks_per_seq * uint64_t(block_size)) + " tokens for each of " +
        std::to_string(std::max(1, sequences)) + " sequence(s)");
  return int(std::min<uint64_t>(blocks, uint64_t(wanted_blocks)));
}

sched::Config config_from_cli(const std::string& config_path, const std::vector<std::string>& sets,
                              const std::string& device) {
  sched::Config c = config_path.empty() ? sched::Config{} : sched::load_config(config_path);
  for (const auto& s : sets) sched::apply_override(c, s);
  if (!device.empty()) {
    sched::DeviceSelector sel;
    sel.id = device;
    c.select = {sel};
    c.exclude.clear();
    if (c.attention != "auto" && c.attention != device) c.attention = "auto";
  }
  return c;
}

EngineSetup setup_engine(const model::ModelSpec& spec, const EngineSetupOptions& o) {
  EngineSetup s;
  s.registry =
      std::make_unique<DeviceRegistry>(DeviceRegistry::discover(o.programs, o.device_limits));
  s.config = config_from_cli(o.config_path, o.sets, o.device);
  skip_unbuildable_devices(*s.registry, s.config);
  const KvLayerFormats kv_formats =
      kv_formats_of(s.config, int(spec.layers.size()), spec.hp.head_dim);
  s.footprint = footprint_of(spec, o.context_tokens, kv_formats);
  s.footprint.max_sequences = s.config.max_sequences.value_or(o.max_sequences);
  std::unique_ptr<ProbeCache> probes;
  if (o.probe) probes = std::make_unique<ProbeCache>(o.probe_dir);
  EngineOptions eo;
  apply_no_fuse(o.no_fuse, eo);
  apply_fuse(o.fuse, eo);
  auto plan = plan_for(*s.registry, s.config, s.footprint, probes.get(), switches_key(eo));
  eo.max_sequences = s.config.max_sequences.value_or(o.max_sequences);
  eo.max_batch_tokens = s.config.max_batch_tokens.value_or(o.max_batch_tokens);
  if (o.all_logits) eo.max_logit_rows = eo.max_batch_tokens;
  eo.max_context = o.context_tokens;
  eo.kv_formats = kv_formats;
  // kv_cache.budget caps the cache (it is not only shown by `tessera plan`); one sequence of
  // context_tokens must fit.
  const int blocks_per_seq = (o.context_tokens + eo.kv_block_size - 1) / eo.kv_block_size;
  eo.kv_blocks = kv_blocks_within_budget(s.config, plan, s.footprint, eo.kv_block_size,
                                         eo.max_sequences * blocks_per_seq, 1, o.context_tokens);
  eo.stream_experts = s.config.stream_experts == "on"    ? EngineOptions::StreamExperts::kOn
                      : s.config.stream_experts == "off" ? EngineOptions::StreamExperts::kOff
                                                         : EngineOptions::StreamExperts::kAuto;
  if (s.config.stream_experts_min_tokens)
    eo.stream_experts_min_tokens = *s.config.stream_experts_min_tokens;
  eo.balancer = o.balancer || (o.config_balancer && !o.config_path.empty() && s.config.balancer);
  eo.profile = o.profile;
  eo.replay = o.replay;
  eo.progress = o.progress;
  if (probes) eo.launch_prices = std::move(probes);
  EngineConfig ec;
  ec.prefill_chunk = s.config.prefill_chunk.value_or(o.prefill_chunk);
  const auto t0 = std::chrono::steady_clock::now();
  auto model = std::make_unique<OpenClModel>(spec, *s.registry, std::move(plan), s.footprint, eo);
  s.engine = std::make_unique<Engine>(std::move(model), ec);
  s.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return s;
}

}  // namespace tessera::engine
