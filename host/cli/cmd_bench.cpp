// `tessera bench`: prefill and decode speed of the OpenCL engine on one model, llama-bench style
// (pp = one prompt of -p tokens, tg = -n single-token decode steps), with the decode bandwidth
// roofline of the plan's devices. Prints a table, or JSON with --json; never judges the figures.
#include <boost/json.hpp>
#include <boost/program_options.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "host/cli/command.h"
#include "host/cli/kv_cache_options.h"
#include "host/cli/settings.h"
#include "host/engine/engine.h"
#include "host/engine/planning.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"

namespace tessera::cli {
namespace {

namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs `request` alone on the engine; returns the seconds until it ended. Throws on failure.
double time_request(engine::Engine& e, engine::Request request) {
  std::string error;
  request.on_output = [&](const engine::RequestOutput& out) {
    if (out.finish == engine::FinishReason::kFailed) error = out.error;
  };
  const auto t0 = Clock::now();
  e.add_request(std::move(request));
  e.run_until_idle();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!error.empty()) throw engine::RequestError(error);
  return s;
}

// One prompt of `prompt.size()` tokens through a fresh sequence, chunked at the engine's
// max_batch_tokens; the seconds until the first token is sampled from the last chunk's logits.
double time_prefill(engine::Engine& e, const std::vector<int32_t>& prompt) {
  engine::Request r;
  r.prompt = prompt;
  r.max_tokens = 1;
  return time_request(e, std::move(r));
}

// `n` greedy single-token steps of `parallel` sequences decoding together, each starting from an
// empty cache with token `first` (one sequence: what llama-bench's tg test measures): the `first`
// tokens in one step, then n - 1 decode steps of `parallel` tokens.
double time_decode(engine::Engine& e, int n, int32_t first, int parallel = 1) {
  if (parallel == 1) {
    engine::Request r;
    r.prompt = {first};
    r.max_tokens = n;
    return time_request(e, std::move(r));
  }
  std::string error;
  const auto t0 = Clock::now();
  for (int i = 0; i < parallel; ++i) {
    engine::Request r;
    r.prompt = {first};
    r.max_tokens = n;
    r.on_output = [&](const engine::RequestOutput& out) {
      if (out.finish == engine::FinishReason::kFailed && error.empty()) error = out.error;
    };
    e.add_request(std::move(r));
  }
  e.run_until_idle();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!error.empty()) throw engine::RequestError(error);
  return s;
}

// `n` decode steps of one sequence after a prompt of `context` (llama-bench's -d): the prompt is
// prefilled (chunked), then the seconds from the first sampled token to the last are the n decode
// steps at contexts [context + 1, context + n].
double time_decode_at_depth(engine::Engine& e, const std::vector<int32_t>& context, int n) {
  engine::Request r;
  r.prompt = context;
  r.max_tokens = n + 1;
  std::string error;
  std::optional<Clock::time_point> first;
  r.on_output = [&](const engine::RequestOutput& out) {
    if (out.finish == engine::FinishReason::kFailed) error = out.error;
    if (out.token >= 0 && !first) first = Clock::now();
  };
  e.add_request(std::move(r));
  e.run_until_idle();
  if (!error.empty()) throw engine::RequestError(error);
  if (!first) throw engine::RequestError("bench --depth: no token was sampled");
  return std::chrono::duration<double>(Clock::now() - *first).count();
}

// Decode roofline of a plan: the weight bytes one token reads on each device (dense parts where
// the layer sits, n_expert_used experts split by the share of the layer's experts each device
// holds, embedding row ignored, output head on the attention device) over that device's probed
// read bandwidth, summed (the devices take turns within a token).
struct Roofline {
  uint64_t active_bytes = 0;
  double seconds_per_token = 0;
};

Roofline roofline_of(const sched::Plan& plan, const sched::ModelFootprint& f) {
  std::vector<double> bytes(plan.devices.size(), 0.0);
  for (size_t l = 0; l < f.layers.size(); ++l) {
    const auto& layer = f.layers[l];
    bytes[size_t(plan.layer_device[l])] += double(layer.dense_bytes);
    if (layer.n_experts == 0) continue;
    for (size_t d = 0; d < plan.devices.size(); ++d) {
      const double share = double(plan.experts_on(int(l), int(d))) / double(layer.n_experts);
      bytes[d] += share * f.n_expert_used * double(layer.expert_bytes);
    }
  }
  bytes[size_t(plan.attention_device)] += double(f.output_bytes);
  Roofline r;
  for (size_t d = 0; d < bytes.size(); ++d) {
    r.active_bytes += uint64_t(bytes[d]);
    r.seconds_per_token += bytes[d] / (plan.devices[d].read_gbps * 1e9);
  }
  return r;
}

// --breakdown of one step kind: the host's view per step (wall, enqueue, wait) from steps run as
// usual, and the device's (commands, device time per kernel) from the same steps run again as
// profiled replays; the gap between wall time and device busy time is what the host, the launches
// and idle devices cost.
struct Breakdown {
  engine::StepTiming host;         // unprofiled steps (deltas of the run)
  engine::ReplayProfile profiled;  // profiled replays (deltas of the run)
};

engine::StepTiming minus(engine::StepTiming a, const engine::StepTiming& b) {
  a.steps -= b.steps;
  a.wall -= b.wall;
  a.enqueue -= b.enqueue;
  a.wait -= b.wait;
  a.sync.syncs -= b.sync.syncs;
  a.sync.read -= b.sync.read;
  a.sync.lanes -= b.sync.lanes;
  a.sync.back -= b.sync.back;
  for (const auto& [id, t] : b.sync.lane_enqueue) a.sync.lane_enqueue[id] -= t;
  for (const auto& [id, t] : b.sync.lane_wait) a.sync.lane_wait[id] -= t;
  return a;
}

engine::ReplayProfile minus(engine::ReplayProfile a, const engine::ReplayProfile& b) {
  a.steps -= b.steps;
  a.launches -= b.launches;
  a.copies -= b.copies;
  a.flushes -= b.flushes;
  a.host_calls -= b.host_calls;
  a.host_syncs -= b.host_syncs;
  a.wall -= b.wall;
  for (const auto& [key, k] : b.kernels) {
    auto& x = a.kernels[key];
    x.launches -= k.launches;
    x.seconds -= k.seconds;
  }
  std::erase_if(a.kernels, [](const auto& e) { return e.second.launches == 0; });
  return a;
}

// Runs `run` twice on `e`: as usual, then with profiled replays; the `kind` steps of each.
template <typename Run>
Breakdown measure_breakdown(engine::Engine& e, const char* kind, Run run) {
  auto& m = e.model();
  const auto timing = [&] {
    auto it = m.stats().step_timing.find(kind);
    return it == m.stats().step_timing.end() ? engine::StepTiming{} : it->second;
  };
  const auto profile = [&] {
    auto it = m.stats().replay_profile.find(kind);
    return it == m.stats().replay_profile.end() ? engine::ReplayProfile{} : it->second;
  };
  Breakdown b;
  const auto t0 = timing();
  run();
  b.host = minus(timing(), t0);
  const auto p0 = profile();
  m.set_profile_replays(true);
  try {
    run();
  } catch (...) {
    m.set_profile_replays(false);
    throw;
  }
  m.set_profile_replays(false);
  b.profiled = minus(profile(), p0);
  return b;
}

// Per step, in milliseconds (0 for no steps).
double per_step_ms(double seconds, uint64_t steps) {
  return steps ? 1e3 * seconds / double(steps) : 0.0;
}

boost::json::object breakdown_json(const Breakdown& b) {
  const uint64_t hs = b.host.steps, ps = b.profiled.steps;
  boost::json::object o;
  o["steps"] = hs;
  o["wall_ms"] = per_step_ms(b.host.wall, hs);
  o["enqueue_ms"] = per_step_ms(b.host.enqueue, hs);
  o["wait_ms"] = per_step_ms(b.host.wait, hs);
  // The multi-device MoE path's host syncs of those steps, per sync.
  const engine::SyncTiming& sync = b.host.sync;
  if (sync.syncs > 0) {
    const auto us = [&](double seconds) { return 1e6 * seconds / double(sync.syncs); };
    boost::json::object so;
    so["per_step"] = hs ? double(sync.syncs) / double(hs) : 0.0;
    so["read_us"] = us(sync.read);
    so["lanes_us"] = us(sync.lanes);
    so["back_us"] = us(sync.back);
    boost::json::object lanes;
    for (const auto& [id, t] : sync.lane_enqueue)
      lanes[id] = {{"enqueue_us", us(t)},
                   {"wait_us", us(sync.lane_wait.count(id) ? sync.lane_wait.at(id) : 0.0)}};
    so["lane"] = lanes;
    o["host_sync"] = so;
  }
  o["profiled_steps"] = ps;
  o["profiled_wall_ms"] = per_step_ms(b.profiled.wall, ps);
  const double per = ps ? 1.0 / double(ps) : 0.0;
  o["launches"] = double(b.profiled.launches) * per;
  o["copies"] = double(b.profiled.copies) * per;
  o["flushes"] = double(b.profiled.flushes) * per;
  o["host_syncs"] = double(b.profiled.host_syncs) * per;
  std::map<std::string, double> busy;
  boost::json::array kernels;
  for (const auto& [key, k] : b.profiled.kernels) {
    busy[key.first] += k.seconds;
    kernels.push_back({{"device", key.first},
                       {"kernel", key.second},
                       {"launches", double(k.launches) * per},
                       {"device_us", 1e6 * k.seconds * per}});
  }
  boost::json::object busy_ms;
  double busy_max = 0;
  for (const auto& [dev, s] : busy) {
    busy_ms[dev] = per_step_ms(s, ps);
    busy_max = std::max(busy_max, per_step_ms(s, ps));
  }
  o["device_busy_ms"] = busy_ms;
  // The busiest device's time against the unprofiled wall time: what launches, host work and
  // waiting cost beyond the kernels of the critical device.
  o["gap_ms"] = per_step_ms(b.host.wall, hs) - busy_max;
  o["kernels"] = kernels;
  return o;
}

// JSON text of `v` with numbers as people write them (%.6g, not Boost's 1.2E1).
std::string readable_json(const boost::json::value& v) {
  switch (v.kind()) {
    case boost::json::kind::double_: {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.6g", v.get_double());
      return buf;
    }
    case boost::json::kind::object: {
      std::string s = "{";
      for (const auto& [k, x] : v.get_object())
        s += (s.size() > 1 ? ", " : "") + boost::json::serialize(boost::json::string(k)) + ": " +
             readable_json(x);
      return s + "}";
    }
    case boost::json::kind::array: {
      std::string s = "[";
      for (const auto& x : v.get_array()) s += (s.size() > 1 ? ", " : "") + readable_json(x);
      return s + "]";
    }
    default:
      return boost::json::serialize(v);
  }
}

void print_breakdown(const char* kind, const boost::json::object& o) {
  auto num = [&](const char* k) { return o.at(k).to_number<double>(); };
  std::printf(
      "breakdown of %s (per step; host over %llu steps, device over %llu profiled "
      "replays):\n",
      kind, static_cast<unsigned long long>(o.at("steps").to_number<uint64_t>()),
      static_cast<unsigned long long>(o.at("profiled_steps").to_number<uint64_t>()));
  std::printf("  host: wall %.3f ms = enqueue %.3f ms + wait %.3f ms (profiled steps: %.3f ms)\n",
              num("wall_ms"), num("enqueue_ms"), num("wait_ms"), num("profiled_wall_ms"));
  std::printf("  commands: %.1f launches, %.1f copies, %.1f flushes, %.1f host syncs\n",
              num("launches"), num("copies"), num("flushes"), num("host_syncs"));
  if (o.contains("host_sync")) {
    const auto& so = o.at("host_sync").as_object();
    auto sn = [&](const boost::json::object& x, const char* k) {
      return x.at(k).to_number<double>();
    };
    std::string lanes;
    for (const auto& [id, l] : so.at("lane").as_object())
      lanes += std::string(lanes.empty() ? "" : ", ") + std::string(id) + " " +
               std::to_string(int(sn(l.as_object(), "enqueue_us") + 0.5)) + " enqueue + " +
               std::to_string(int(sn(l.as_object(), "wait_us") + 0.5)) + " wait";
    std::printf(
        "  host syncs (unprofiled): %.1f per step, each: home read %.1f us, devices' experts "
        "%.1f us (%s), back %.1f us\n",
        sn(so, "per_step"), sn(so, "read_us"), sn(so, "lanes_us"), lanes.c_str(),
        sn(so, "back_us"));
  }
  std::string busy;
  for (const auto& [dev, ms] : o.at("device_busy_ms").as_object())
    busy += (busy.empty() ? "" : ", ") + std::string(dev) + " " +
            std::to_string(ms.to_number<double>()).substr(0, 6) + " ms";
  std::printf("  device busy: %s; gap (wall - busiest device) %.3f ms\n",
              busy.empty() ? "none" : busy.c_str(), num("gap_ms"));
  std::vector<const boost::json::object*> ks;
  for (const auto& k : o.at("kernels").as_array()) ks.push_back(&k.as_object());
  std::sort(ks.begin(), ks.end(), [](const boost::json::object* a, const boost::json::object* b) {
    return a->at("device_us").to_number<double>() > b->at("device_us").to_number<double>();
  });
  std::printf("  %-8s %-40s %9s %10s\n", "device", "kernel", "launches", "us/step");
  for (const auto* k : ks)
    std::printf("  %-8s %-40s %9.1f %10.1f\n", k->at("device").as_string().c_str(),
                k->at("kernel").as_string().c_str(), k->at("launches").to_number<double>(),
                k->at("device_us").to_number<double>());
}

int run_bench(const std::vector<std::string>& args) {
  std::string model_path, config_path, device;
  std::vector<std::string> sets;
  KvCacheTypes cache_types;
  int n_prompt = 512, n_gen = 128, reps = 3, max_batch = 512, depth = 0, parallel = 1;
  bool json = false, balancer = false, no_replay = false, breakdown = false;
  po::options_description opts(
      "tessera bench -m MODEL.gguf [--device ID | --config FILE] [-p N] [-n N] [-r N] [--json]");
  opts.add_options()("help,h", "show this help")(
      "model,m", po::value<std::string>(&model_path)->required(), "GGUF model file")(
      "device", po::value<std::string>(&device), "run on this one OpenCL device (e.g. gpu0, cpu0)")(
      "config", po::value<std::string>(&config_path), "device-selection config (YAML)")(
      "set", po::value<std::vector<std::string>>(&sets)->composing(),
      "override a config key (KEY=VALUE)")("n-prompt,p",
                                           po::value<int>(&n_prompt)->default_value(512),
                                           "prompt tokens (0: skip prefill)")(
      "n-gen,n", po::value<int>(&n_gen)->default_value(128), "decode tokens (0: skip decode)")(
      "depth,d", po::value<int>(&depth)->default_value(0),
      "decode after a prompt of this many tokens (llama-bench -d): the tg figure is the rate of "
      "the decode steps at that context")(
      "parallel", po::value<int>(&parallel)->default_value(1),
      "sequences decoding together in the decode test (tokens/s counts all of them): the "
      "batched decode steps of a server")("repetitions,r", po::value<int>(&reps)->default_value(3),
                                          "timed repetitions (median reported)")(
      "batch", po::value<int>(&max_batch)->default_value(512),
      "engine max_batch_tokens (prefill chunk)")(
      "balancer", po::bool_switch(&balancer),
      "re-place experts between steps (also on with a --config whose balancer is enabled)")(
      "no-replay", po::bool_switch(&no_replay),
      "enqueue every step afresh instead of replaying its recorded step program")(
      "breakdown", po::bool_switch(&breakdown),
      "after the timed runs, one more prefill and decode run as usual and one with profiled "
      "replays: host time per step (enqueue, wait), commands, device time per kernel and the gap")(
      "json", po::bool_switch(&json), "print one JSON object instead of the table");
  add_kv_cache_type_options(opts, cache_types);
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (n_prompt < 0 || n_gen < 0 || depth < 0 || reps < 1 || max_batch < 1)
    throw std::runtime_error("-p, -n and --depth must be >= 0, -r and --batch >= 1");
  if (parallel < 1 || parallel > 1024) throw std::runtime_error("--parallel must be in 1..1024");
  if (parallel > 1 && depth > 0)
    throw std::runtime_error("--parallel and --depth together are not supported (one of them)");

  const auto file = gguf::GgufFile::open(model_path);
  const auto spec = model::ModelSpec::from_gguf(file);
  engine::EngineSetupOptions so;
  so.no_fuse = settings().no_fuse;
  so.fuse = settings().fuse;
  so.config_path = config_path;
  so.sets = sets;
  prepend_kv_cache_sets(cache_types, so.sets);
  so.device = device;
  // --batch given on the command line wins over a config's batching.max_batch_tokens.
  if (!vm["batch"].defaulted())
    so.sets.push_back("batching.max_batch_tokens=" + std::to_string(max_batch));
  so.context_tokens = std::max(n_prompt, depth + n_gen + 1) + 16;
  so.max_sequences = parallel;
  so.max_batch_tokens = std::max(max_batch, parallel);
  so.balancer = balancer;
  so.replay = !no_replay;
  so.programs = tessera::cli::program_cache();
  so.probe_dir = tessera::cli::probe_dir();
  so.device_limits = tessera::cli::device_limits();
  auto setup = engine::setup_engine(spec, so);
  engine::Engine& e = *setup.engine;
  const engine::OpenClModel& m = e.model();
  const sched::Plan& plan = setup.plan();
  const sched::ModelFootprint& footprint = setup.footprint;
  const double load_s = setup.load_seconds;
  max_batch = m.options().max_batch_tokens;
  const bool balancer_on = m.options().balancer;

  // Prompt: seeded ids past the special tokens (like llama-bench's random prompt).
  const uint32_t n_vocab = spec.hp.n_vocab;
  std::vector<int32_t> prompt(static_cast<size_t>(std::max(n_prompt, depth)));
  uint64_t state = 0x5DEECE66Dull;
  for (auto& id : prompt) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    id = int32_t(3 + (state >> 33) % (n_vocab > 3 ? n_vocab - 3 : 1));
  }
  const std::vector<int32_t> context(prompt.begin(), prompt.begin() + depth);
  prompt.resize(size_t(n_prompt));
  // Warm-up: compiles and caches every kernel of both paths, touches the buffers.
  if (depth > 0 && n_gen > 0) time_decode_at_depth(e, context, std::min(n_gen, 4));
  if (n_prompt > 0)
    time_prefill(
        e, std::vector<int32_t>(prompt.begin(), prompt.begin() + std::min(n_prompt, max_batch)));
  if (n_gen > 0) time_decode(e, std::min(n_gen, 4), 1, parallel);
  // With the balancer on, decode until its placement settles (two rounds of the test without a
  // move, at most 16 rounds), so the timed runs measure the placement it converged to; the moves
  // and warm-up steps are reported.
  int balancer_warmup_steps = 0;
  if (balancer_on && n_gen > 0) {
    uint64_t last = m.stats().balancer_moves;
    for (int round = 0, quiet = 0; round < 16 && quiet < 2; ++round) {
      time_decode(e, n_gen, 1);
      balancer_warmup_steps += n_gen;
      quiet = m.stats().balancer_moves == last ? quiet + 1 : 0;
      last = m.stats().balancer_moves;
    }
  }
  const uint64_t warmup_moves = m.stats().balancer_moves;

  std::vector<double> pp, tg;
  for (int r = 0; r < reps; ++r) {
    if (n_prompt > 0) pp.push_back(double(n_prompt) / time_prefill(e, prompt));
    if (n_gen > 0)
      tg.push_back(double(n_gen) * parallel /
                   (depth > 0 ? time_decode_at_depth(e, context, n_gen)
                              : time_decode(e, n_gen, 1, parallel)));
  }
  const double pp_tps = pp.empty() ? 0 : median(pp), tg_tps = tg.empty() ? 0 : median(tg);

  boost::json::object breakdowns;
  if (breakdown) {
    if (!m.options().replay)
      throw std::runtime_error(
          "--breakdown profiles replayed step programs: it needs replay on (no --no-replay)");
    if (n_prompt > 0)
      breakdowns["prefill"] =
          breakdown_json(measure_breakdown(e, "prefill", [&] { time_prefill(e, prompt); }));
    if (n_gen > 0)
      breakdowns["decode"] = breakdown_json(measure_breakdown(e, "decode", [&] {
        // At --depth the decode steps run after the prompt, as the timed ones did.
        if (depth > 0)
          time_decode_at_depth(e, context, n_gen);
        else
          time_decode(e, n_gen, 1, parallel);
      }));
  }
  const Roofline roof = roofline_of(plan, footprint);
  const double roof_tps = roof.seconds_per_token > 0 ? 1.0 / roof.seconds_per_token : 0;
  const double frac = roof_tps > 0 ? tg_tps / roof_tps : 0;

  std::string devs, devs_json;
  for (size_t d = 0; d < plan.devices.size(); ++d) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%s%s (%.1f GB/s)", d ? ", " : "", plan.devices[d].id.c_str(),
                  plan.devices[d].read_gbps);
    devs += buf;
    std::snprintf(buf, sizeof(buf),
                  "%s{\"id\": \"%s\", \"read_gbps\": %.2f, \"weight_bytes\": %llu}", d ? ", " : "",
                  plan.devices[d].id.c_str(), plan.devices[d].read_gbps,
                  static_cast<unsigned long long>(plan.weight_bytes[d]));
    devs_json += buf;
  }
  auto list = [](const std::vector<double>& v) {
    std::string s;
    for (double x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
    return "[" + s + "]";
  };
  const KvTokenBytes kv_bytes = kv_token_bytes(m.kv_cache());
  // The cost model's decode step beside the measured one (plan() has the balancer's moves).
  const double predicted_ms = m.plan().decode_step_seconds * 1e3;
  // The same prediction with each device's launches at the launch probe's price, as before the
  // engine priced them from its own decode steps (EngineOptions::launch_prices).
  sched::Plan at_probe = m.plan();
  for (auto& d : at_probe.devices)
    if (d.probe_launch_us > 0) d.launch_us = d.probe_launch_us;
  const auto load = m.balancer().enabled() ? std::optional(m.balancer().load()) : std::nullopt;
  sched::predict(at_probe, m.footprint(), load ? &*load : nullptr);
  const double probe_priced_ms = at_probe.decode_step_seconds * 1e3;
  // A decode step carries `parallel` tokens; the planner predicts one token's step.
  const double measured_ms = tg_tps > 0 ? 1e3 * parallel / tg_tps : 0;
  if (json) {
    std::printf(
        "{\"model\": \"%s\", \"devices\": [%s], \"attention_device\": \"%s\", \"n_prompt\": %d, "
        "\"n_gen\": %d, \"depth\": %d, \"parallel\": %d, \"repetitions\": %d, "
        "\"max_batch_tokens\": %d, \"load_seconds\": %.3f, "
        "\"prefill_tokens_per_second\": %.2f, \"decode_tokens_per_second\": %.2f, "
        "\"prefill_runs\": %s, \"decode_runs\": %s, \"kv_bytes_per_token\": %llu, "
        "\"kv_f16_bytes_per_token\": %llu, \"active_bytes_per_token\": %llu, "
        "\"roofline_tokens_per_second\": %.2f, \"roofline_fraction\": %.4f, \"balancer\": %s, "
        "\"balancer_moves\": %llu, \"balancer_warmup_moves\": %llu, "
        "\"balancer_warmup_steps\": %d, \"predicted_decode_ms\": %.4f, "
        "\"predicted_decode_probe_prices_ms\": %.4f, \"measured_decode_ms\": %.4f, \"replay\": %s, "
        "\"streamed_layers\": %llu, "
        "\"streamed_bytes\": %llu, \"streamed_ahead\": %llu%s}\n",
        model_path.c_str(), devs_json.c_str(),
        plan.devices[size_t(plan.attention_device)].id.c_str(), n_prompt, n_gen, depth, parallel,
        reps, max_batch, load_s, pp_tps, tg_tps, list(pp).c_str(), list(tg).c_str(),
        static_cast<unsigned long long>(kv_bytes.bytes),
        static_cast<unsigned long long>(kv_bytes.f16_bytes),
        static_cast<unsigned long long>(roof.active_bytes), roof_tps, frac,
        balancer_on ? "true" : "false", static_cast<unsigned long long>(m.stats().balancer_moves),
        static_cast<unsigned long long>(warmup_moves), balancer_warmup_steps, predicted_ms,
        probe_priced_ms, measured_ms, m.options().replay ? "true" : "false",
        static_cast<unsigned long long>(m.stats().streamed_layers),
        static_cast<unsigned long long>(m.stats().streamed_bytes),
        static_cast<unsigned long long>(m.stats().streamed_ahead),
        breakdown ? (", \"breakdown\": " + readable_json(breakdowns)).c_str() : "");
  } else {
    std::printf("model: %s\ndevices: %s; attention on %s; loaded in %.2f s\n", model_path.c_str(),
                devs.c_str(), plan.devices[size_t(plan.attention_device)].id.c_str(), load_s);
    std::printf("%s\n", kv_format_summary(m.kv_cache()).c_str());
    std::printf("%-8s %10s %14s\n", "test", "tokens/s", "runs");
    if (n_prompt > 0) std::printf("pp%-6d %10.2f %14s\n", n_prompt, pp_tps, list(pp).c_str());
    if (n_gen > 0) {
      const std::string test = "tg" + std::to_string(n_gen) +
                               (depth > 0 ? "@d" + std::to_string(depth) : "") +
                               (parallel > 1 ? "x" + std::to_string(parallel) : "");
      std::printf("%-8s %10.2f %14s\n", test.c_str(), tg_tps, list(tg).c_str());
    }
    std::printf(
        "active weight bytes per token: %.1f MiB; decode roofline %.1f tokens/s; reached %.1f%%\n",
        double(roof.active_bytes) / 1048576.0, roof_tps, 100.0 * frac);
    if (n_gen > 0 && parallel > 1)
      std::printf("decode step of %d sequences: %.3f ms (the roofline is one sequence's)\n",
                  parallel, measured_ms);
    if (n_gen > 0 && predicted_ms > 0 && parallel == 1)
      std::printf(
          "decode step: planner predicted %.3f ms (%.3f ms with the launch probe's prices), "
          "measured %.3f ms (%.2fx)\n",
          predicted_ms, probe_priced_ms, measured_ms, measured_ms / predicted_ms);
    if (balancer_on)
      std::printf("balancer: %llu expert moves (%llu in %d warm-up decode steps)\n",
                  static_cast<unsigned long long>(m.stats().balancer_moves),
                  static_cast<unsigned long long>(warmup_moves), balancer_warmup_steps);
    if (m.stats().streamed_layers > 0)
      std::printf(
          "streamed experts: %llu layer steps (%llu written while the layer before computed), "
          "%.1f MiB written (all runs)\n",
          static_cast<unsigned long long>(m.stats().streamed_layers),
          static_cast<unsigned long long>(m.stats().streamed_ahead),
          double(m.stats().streamed_bytes) / 1048576.0);
    for (const char* kind : {"prefill", "decode"})
      if (breakdowns.contains(kind)) print_breakdown(kind, breakdowns.at(kind).as_object());
  }
  return 0;
}

const CommandRegistrar kRegistrar(
    "bench", "prefill and decode speed of the engine on a model (llama-bench style)", run_bench);

}  // namespace
}  // namespace tessera::cli
