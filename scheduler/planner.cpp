// The placement planner: dense layers on the attention device (spilling by bandwidth when full),
// routed experts by shares / pins / cpu_moe_layers, or (auto) spread in proportion to bandwidth or
// kept whole on their layer's device, whichever the cost model predicts faster, within budgets;
// then the cost model predicts per-device time.
#include "scheduler/planner.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include <boost/json.hpp>

namespace tessera::sched {

namespace {

// The cost model's time of an op whose bytes stream at `gbps`.
double seconds_at(double gbps, const DeviceCost& d, double bytes, double flops, int launches) {
  return std::max(bytes / (gbps * 1e9), flops / (d.fp32_gflops * 1e9)) +
         launches * d.launch_us * 1e-6;
}

}  // namespace

double op_seconds(const DeviceCost& d, double bytes, double flops, int launches) {
  return seconds_at(d.read_gbps, d, bytes, flops, launches);
}

double weight_rate(const DeviceCost& d) {
  return d.weight_gbps > 0 ? d.weight_gbps : d.read_gbps;
}

double weight_op_seconds(const DeviceCost& d, double bytes, double flops, int launches) {
  return seconds_at(weight_rate(d), d, bytes, flops, launches);
}

double transfer_seconds(const DeviceCost& from, const DeviceCost& to, double bytes) {
  return bytes / (from.d2h_gbps * 1e9) + bytes / (to.h2d_gbps * 1e9) +
         (from.sync_us + to.sync_us) * 1e-6;
}

bool Plan::holds(int layer, int expert, int device) const {
  if (expert_device[size_t(layer)][size_t(expert)] == device) return true;
  return size_t(layer) < expert_copies.size() &&
         size_t(expert) < expert_copies[size_t(layer)].size() &&
         (expert_copies[size_t(layer)][size_t(expert)] >> device & 1u) != 0;
}

int Plan::experts_on(int layer, int device) const {
  const auto& e = expert_device[size_t(layer)];
  return int(std::count(e.begin(), e.end(), device));
}

namespace {

int find_device(const std::vector<DeviceCost>& devs, const std::string& id,
                const std::string& key) {
  for (size_t i = 0; i < devs.size(); ++i)
    if (devs[i].id == id) return int(i);
  std::string ids;
  for (const auto& d : devs) ids += (ids.empty() ? "" : ", ") + d.id;
  throw ConfigError(key + ": device '" + id + "' is not selected; selected: " + ids);
}

// Splits n items over weights by largest remainder; deterministic (ties go to the lower index).
// Weights are finite and >= 0 (make_plan checks); they are scaled by the largest first, so figures
// near the double range (a share of 1e308) neither overflow nor lose the proportions.
std::vector<int> apportion(int n, const std::vector<double>& weights) {
  std::vector<int> out(weights.size(), 0);
  const double largest = weights.empty() ? 0.0 : *std::max_element(weights.begin(), weights.end());
  if (!(largest > 0) || n <= 0) return out;
  std::vector<double> scaled(weights.size());
  for (size_t i = 0; i < weights.size(); ++i) scaled[i] = weights[i] / largest;  // in [0, 1]
  const double total = std::accumulate(scaled.begin(), scaled.end(), 0.0);       // in [1, size]
  std::vector<std::pair<double, size_t>> rema;
  int given = 0;
  for (size_t i = 0; i < scaled.size(); ++i) {
    const double exact = double(n) * (scaled[i] / total);  // in [0, n]
    out[i] = std::min(n - given, int(std::floor(exact)));
    given += out[i];
    rema.push_back({exact - std::floor(exact), i});
  }
  std::stable_sort(rema.begin(), rema.end(), [](auto& a, auto& b) { return a.first > b.first; });
  // Rounding leaves fewer than weights.size() items; cycling keeps the loop inside the array.
  for (size_t i = 0; given < n; ++i, ++given) out[rema[i % rema.size()].second] += 1;
  return out;
}

// A device figure the cost model divides by or adds: finite and positive (launch latency may be 0).
void check_figure(const DeviceCost& d, const char* name, double v, bool zero_ok = false) {
  if (!std::isfinite(v) || v < 0 || (!zero_ok && v == 0))
    throw PlanError("device " + d.id + ": " + name + " " + std::to_string(v) +
                    " is not a usable figure (must be a finite number " +
                    (zero_ok ? ">= 0" : "> 0") + "); re-measure with `tessera devices --probe`");
}

}  // namespace

void predict(Plan& plan, const ModelFootprint& model,
             const std::vector<std::vector<double>>* load) {
  const size_t nd = plan.devices.size();
  plan.decode_seconds.assign(nd, 0.0);
  double step = 0;
  const auto& att = plan.devices[size_t(plan.attention_device)];
  const double emb_row =
      model.embedding_bytes / std::max(1.0, double(model.n_embd));  // ~one row read
  step += op_seconds(att, emb_row, 0, model.embedding_launches);
  plan.decode_seconds[size_t(plan.attention_device)] +=
      op_seconds(att, emb_row, 0, model.embedding_launches);
  const double act_bytes = 4.0 * model.n_embd;
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const auto& layer = model.layers[l];
    const int ld = plan.layer_device[l];
    const auto& ldev = plan.devices[size_t(ld)];
    // A recurrent layer also reads and writes its sequence's state every token.
    double t = weight_op_seconds(ldev, double(layer.dense_bytes), 2.0 * layer.dense_bytes,
                                 layer.dense_launches) +
               double(2 * layer.state_bytes) / (ldev.read_gbps * 1e9);
    plan.decode_seconds[size_t(ld)] += t;
    const int prev = l == 0 ? plan.attention_device : plan.layer_device[l - 1];
    if (prev != ld) t += transfer_seconds(plan.devices[size_t(prev)], ldev, act_bytes);
    double slowest = 0, on_cpus = 0;
    if (layer.n_experts > 0) {
      // Experts on another device: every token's routing (and activations) go to the host from
      // the layer's device, a host wait whether or not a token picks a remote expert.
      const auto& a = plan.expert_device[l];
      if (std::any_of(a.begin(), a.end(), [ld](int d) { return d != ld; }))
        t += act_bytes / (ldev.d2h_gbps * 1e9) + ldev.sync_us * 1e-6;
      for (size_t d = 0; d < nd; ++d) {
        double expected = 0;  // expected number of selected experts on device d per token
        for (int e = 0; e < layer.n_experts; ++e) {
          if (plan.expert_device[l][size_t(e)] != int(d)) continue;
          expected += load ? (*load)[l][size_t(e)] : double(model.n_expert_used) / layer.n_experts;
        }
        if (expected <= 0) continue;
        // Streaming the selected experts' bytes, plus a fixed cost (the expert launches and, off
        // the layer's device, the round trip) paid only by tokens that select any expert here:
        // with k picks, probability 1 - (1 - expected / k)^k. A layer whose last expert leaves a
        // device saves that device's launches and round trip entirely.
        const double k = std::max(1, model.n_expert_used);
        const double p_use = 1.0 - std::pow(std::max(0.0, 1.0 - expected / k), k);
        double te = weight_op_seconds(plan.devices[d], expected * layer.expert_bytes,
                                      2.0 * expected * layer.expert_bytes, 0);
        te += p_use * layer.expert_launches * plan.devices[d].launch_us * 1e-6;
        plan.decode_seconds[d] += te;
        if (int(d) != ld) te += p_use * 2 * transfer_seconds(ldev, plan.devices[d], act_bytes);
        // Devices work on their experts concurrently, except CPU devices: every OpenCL CPU device
        // is the host's processor (two PoCL devices split nothing), so their times add up.
        if (plan.devices[d].type == DeviceType::kCpu)
          on_cpus += te;
        else
          slowest = std::max(slowest, te);
      }
    }
    step += t + std::max(slowest, on_cpus);
  }
  const double out_t = weight_op_seconds(att, double(model.output_bytes), 2.0 * model.output_bytes,
                                         model.output_launches);
  plan.decode_seconds[size_t(plan.attention_device)] += out_t;
  plan.decode_step_seconds = step + out_t;
}

std::vector<double> streaming_seconds(const Plan& plan, const ModelFootprint& model,
                                      const std::vector<std::vector<double>>* expert_load) {
  Plan p = plan;
  for (auto& d : p.devices) d.launch_us = 0;
  predict(p, model, expert_load);
  return p.decode_seconds;
}

double calibrated_launch_us(double stream_us, double busy_seconds, double launches,
                            double weight_seconds) {
  if (!(launches > 0) || !std::isfinite(busy_seconds) || !std::isfinite(weight_seconds) ||
      !std::isfinite(stream_us))
    return 0;
  const double beyond = std::max(0.0, busy_seconds - std::max(0.0, weight_seconds));
  return std::max(std::max(0.0, stream_us), 1e6 * beyond / launches);
}

namespace {

Plan place(const ModelFootprint& model, const std::vector<DeviceCost>& devices,
           const Config& config);

// Room a plan needs on its attention device for streamed experts (EngineOptions::stream_experts):
// the largest of its layers' expert sets, twice when two or more layers stream (the engine's two
// buffers, taken in turn so that one layer's write runs while the layer before computes), when a
// layer there has experts on another device and streaming applies to that device (auto: not a
// CPU); 0 otherwise.
uint64_t stream_room(const Plan& plan, const ModelFootprint& model, const Config& config) {
  const int ad = plan.attention_device;
  if (config.stream_experts == "off" || plan.devices.size() < 2 ||
      (config.stream_experts == "auto" && plan.devices[size_t(ad)].type == DeviceType::kCpu))
    return 0;
  uint64_t room = 0;
  int streamed = 0;
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const auto& fl = model.layers[l];
    if (fl.n_experts == 0 || plan.layer_device[l] != ad) continue;
    room = std::max(room, fl.expert_bytes * uint64_t(fl.n_experts));
    bool elsewhere = false;
    for (int d : plan.expert_device[l]) elsewhere |= d != ad;
    streamed += elsewhere ? 1 : 0;
  }
  return streamed == 0 ? 0 : room * uint64_t(std::min(streamed, 2));
}

}  // namespace

Plan make_plan(const ModelFootprint& model, const std::vector<DeviceCost>& devices,
               const Config& config) {
  Plan plan = place(model, devices, config);
  const uint64_t room = stream_room(plan, model, config);
  if (room == 0) return plan;
  // Placed again with that room taken off the attention device's budget (more experts may then
  // go elsewhere; the room stays the largest layer's).
  const size_t ad = size_t(plan.attention_device);
  std::vector<DeviceCost> within = devices;
  within[ad].budget_bytes = within[ad].budget_bytes > room ? within[ad].budget_bytes - room : 0;
  Plan kept = place(model, within, config);
  if (size_t(kept.attention_device) == ad) kept.stream_bytes[ad] = room;
  return kept;
}

namespace {

Plan place(const ModelFootprint& model, const std::vector<DeviceCost>& devices,
           const Config& config) {
  if (devices.empty()) throw PlanError("no device selected");
  for (const auto& d : devices) {
    check_figure(d, "read bandwidth (GB/s)", d.read_gbps);
    check_figure(d, "weight streaming rate (GB/s)", d.weight_gbps, true);
    check_figure(d, "fp32 throughput (GFLOP/s)", d.fp32_gflops);
    check_figure(d, "launch cost (us)", d.launch_us, true);
    check_figure(d, "host wait (us)", d.sync_us, true);
    check_figure(d, "host-to-device bandwidth (GB/s)", d.h2d_gbps);
    check_figure(d, "device-to-host bandwidth (GB/s)", d.d2h_gbps);
  }
  Plan plan;
  plan.devices = devices;
  const size_t nd = devices.size();
  const size_t nl = model.layers.size();
  std::vector<uint64_t> used(nd, 0);
  auto free_bytes = [&](size_t d) {
    return devices[d].budget_bytes > used[d] ? devices[d].budget_bytes - used[d] : 0;
  };

  // Devices by bandwidth, fastest first (stable: discovery order breaks ties).
  std::vector<size_t> by_speed(nd);
  std::iota(by_speed.begin(), by_speed.end(), 0);
  std::stable_sort(by_speed.begin(), by_speed.end(), [&](size_t a, size_t b) {
    return weight_rate(devices[a]) > weight_rate(devices[b]);
  });

  // 1. Attention device: embeddings, output head, KV cache and (as far as they fit) dense layers.
  uint64_t dense_total = 0;
  for (const auto& l : model.layers) dense_total += l.dense_bytes;
  const uint64_t kv_need = config.kv_budget
                               ? config.kv_budget->resolve(devices[0].memory_bytes)
                               : model.kv_bytes_per_token * uint64_t(model.context_tokens);
  const uint64_t head_bytes = model.embedding_bytes + model.output_bytes + kv_need;
  if (config.attention != "auto") {
    plan.attention_device = find_device(devices, config.attention, "placement.attention");
  } else {
    plan.attention_device = int(by_speed[0]);
    for (size_t d : by_speed) {
      if (devices[d].budget_bytes >= head_bytes + dense_total) {
        plan.attention_device = int(d);
        break;
      }
    }
  }
  const size_t ad = size_t(plan.attention_device);
  if (devices[ad].budget_bytes < head_bytes)
    throw PlanError("device " + devices[ad].id + " needs " + format_bytes(head_bytes) +
                    " for embeddings, output head and KV cache but its budget is " +
                    format_bytes(devices[ad].budget_bytes) + " (missing " +
                    format_bytes(head_bytes - devices[ad].budget_bytes) + ")");
  used[ad] += head_bytes;
  plan.kv_bytes.assign(nd, 0);
  plan.kv_bytes[ad] = kv_need;

  // 2. Dense layers (with their recurrent state, which lives where the layer runs): on the
  // attention device while they fit, then spill to the next fastest.
  plan.layer_device.assign(nl, plan.attention_device);
  plan.state_bytes.assign(nd, 0);
  for (size_t l = 0; l < nl; ++l) {
    const uint64_t state = model.layers[l].state_bytes * uint64_t(std::max(1, model.max_sequences));
    const uint64_t need = model.layers[l].dense_bytes + state;
    int chosen = -1;
    if (free_bytes(ad) >= need) {
      chosen = int(ad);
    } else {
      for (size_t d : by_speed)
        if (free_bytes(d) >= need) {
          chosen = int(d);
          break;
        }
    }
    if (chosen < 0)
      throw PlanError("layer " + std::to_string(l) + " dense weights" +
                      (state ? " and recurrent state (" : " (") + format_bytes(need) +
                      ") fit on no selected device; free: " + [&] {
                        std::string s;
                        for (size_t d = 0; d < nd; ++d)
                          s += (d ? ", " : "") + devices[d].id + " " + format_bytes(free_bytes(d));
                        return s;
                      }());
    plan.layer_device[l] = chosen;
    used[size_t(chosen)] += need;
    plan.state_bytes[size_t(chosen)] += state;
  }

  // 3. Routed experts.
  std::vector<double> share(nd, 0.0);
  if (config.experts_mode == "shares") {
    for (const auto& [id, s] : config.expert_shares) {
      if (!std::isfinite(s) || s < 0)
        throw ConfigError("placement.experts.shares." + id + ": " + std::to_string(s) +
                          " must be a finite number >= 0");
      share[size_t(find_device(devices, id, "placement.experts.shares." + id))] = s;
    }
    if (std::accumulate(share.begin(), share.end(), 0.0) <= 0)
      throw ConfigError("placement.experts.shares: shares sum to zero");
  } else {
    for (size_t d = 0; d < nd; ++d) share[d] = weight_rate(devices[d]);  // decode streams weights
  }
  plan.expert_device.assign(nl, {});
  int cpu_device = -1;
  for (size_t d = 0; d < nd; ++d)
    if (devices[d].type == DeviceType::kCpu) {
      cpu_device = int(d);
      break;
    }
  if (config.cpu_moe_layers && cpu_device < 0)
    throw ConfigError("placement.cpu_moe_layers: no CPU device is selected");
  int max_experts = 0;
  for (const auto& layer : model.layers) max_experts = std::max(max_experts, layer.n_experts);
  for (size_t i = 0; i < config.expert_pins.size(); ++i) {
    const auto& pin = config.expert_pins[i];
    const std::string key = "placement.experts.pins[" + std::to_string(i) + "]";
    if (size_t(pin.layer_first) >= nl)
      throw ConfigError(key + ".layers: starts at layer " + std::to_string(pin.layer_first) +
                        " but the model has " + std::to_string(nl) + " layers");
    if (pin.expert_first >= max_experts)
      throw ConfigError(key + ".experts: starts at expert " + std::to_string(pin.expert_first) +
                        " but the model's layers have " + std::to_string(max_experts) + " experts");
  }
  if (config.cpu_moe_layers && size_t(*config.cpu_moe_layers) > nl)
    throw ConfigError("placement.cpu_moe_layers: " + std::to_string(*config.cpu_moe_layers) +
                      " is more than the model's " + std::to_string(nl) + " layers");
  // Experts of each layer: pins, cpu_moe_layers, then the rest in contiguous ranges by the shares
  // (whole_layers: all on the layer's device); then, within budgets, experts move off over-full
  // devices (last layers first) onto the fastest device with room.
  const std::vector<uint64_t> used_dense = used;
  auto place_experts = [&](bool whole_layers) {
    used = used_dense;
    for (size_t l = 0; l < nl; ++l) {
      const int ne = model.layers[l].n_experts;
      auto& assign = plan.expert_device[l];
      assign.assign(size_t(ne), -1);
      if (ne == 0) continue;
      for (const auto& pin : config.expert_pins) {
        const int lf = pin.layer_first, ll = pin.layer_last < 0 ? int(nl) - 1 : pin.layer_last;
        if (int(l) < lf || int(l) > ll) continue;
        const int ef = pin.expert_first,
                  el = pin.expert_last < 0 ? ne - 1 : std::min(pin.expert_last, ne - 1);
        const int d = find_device(devices, pin.device, "placement.experts.pins");
        for (int e = ef; e <= el; ++e) assign[size_t(e)] = d;
      }
      if (config.cpu_moe_layers || whole_layers) {
        const int d = config.cpu_moe_layers && int(l) < *config.cpu_moe_layers
                          ? cpu_device
                          : plan.layer_device[l];
        for (auto& a : assign)
          if (a < 0) a = d;
      }
      // Unpinned experts: contiguous ranges in proportion to the shares.
      std::vector<int> free_experts;
      for (int e = 0; e < ne; ++e)
        if (assign[size_t(e)] < 0) free_experts.push_back(e);
      const auto counts = apportion(int(free_experts.size()), share);
      size_t next = 0;
      for (size_t d = 0; d < nd; ++d)
        for (int c = 0; c < counts[d]; ++c) assign[size_t(free_experts[next++])] = int(d);
      for (int e = 0; e < ne; ++e) used[size_t(assign[size_t(e)])] += model.layers[l].expert_bytes;
    }
    for (size_t d = 0; d < nd; ++d) {
      for (size_t l = nl; l-- > 0 && used[d] > devices[d].budget_bytes;) {
        auto& assign = plan.expert_device[l];
        for (size_t e = assign.size(); e-- > 0 && used[d] > devices[d].budget_bytes;) {
          if (assign[e] != int(d)) continue;
          const uint64_t eb = model.layers[l].expert_bytes;
          int target = -1;
          for (size_t t : by_speed)
            if (t != d && free_bytes(t) >= eb) {
              target = int(t);
              break;
            }
          if (target < 0) break;
          assign[e] = target;
          used[d] -= eb;
          used[size_t(target)] += eb;
        }
      }
    }
  };
  place_experts(false);
  // Auto: spreading a layer's experts by bandwidth makes every token of the layer wait for a host
  // round trip; keep each layer's experts on its device instead (spilling whole layers, last
  // first, where a budget is short) when the cost model predicts that faster.
  if (config.experts_mode == "auto" && !config.cpu_moe_layers && nd > 1) {
    auto fits = [&] {
      for (size_t d = 0; d < nd; ++d)
        if (used[d] > devices[d].budget_bytes) return false;
      return true;
    };
    const bool spread_fits = fits();
    const auto spread = plan.expert_device;
    const auto spread_used = used;
    predict(plan, model);
    const double spread_step = plan.decode_step_seconds;
    place_experts(true);
    predict(plan, model);
    if (!fits() || (spread_fits && spread_step <= plan.decode_step_seconds)) {
      plan.expert_device = spread;
      used = spread_used;
    }
  }
  std::string missing;
  for (size_t d = 0; d < nd; ++d)
    if (used[d] > devices[d].budget_bytes)
      missing += (missing.empty() ? "" : "; ") + devices[d].id + " needs " + format_bytes(used[d]) +
                 " but its budget is " + format_bytes(devices[d].budget_bytes) + " (missing " +
                 format_bytes(used[d] - devices[d].budget_bytes) + ")";
  if (!missing.empty()) throw PlanError("the model does not fit the selected devices: " + missing);

  plan.weight_bytes.assign(nd, 0);
  for (size_t d = 0; d < nd; ++d)
    plan.weight_bytes[d] = used[d] - plan.kv_bytes[d] - plan.state_bytes[d];
  plan.stream_bytes.assign(nd, 0);
  predict(plan, model);
  return plan;
}

}  // namespace

std::string Plan::to_text(const ModelFootprint& model) const {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof(line), "%-8s %-6s %12s %12s %12s %10s %12s %14s\n", "device", "type",
                "budget", "weights", "kv cache", "read GB/s", "weights GB/s", "decode ms/tok");
  o << line;
  for (size_t d = 0; d < devices.size(); ++d) {
    std::snprintf(line, sizeof(line), "%-8s %-6s %12s %12s %12s %10.1f %12.1f %14.3f\n",
                  devices[d].id.c_str(), device_type_name(devices[d].type),
                  format_bytes(devices[d].budget_bytes).c_str(),
                  format_bytes(weight_bytes[d]).c_str(), format_bytes(kv_bytes[d]).c_str(),
                  devices[d].read_gbps, weight_rate(devices[d]), decode_seconds[d] * 1e3);
    o << line;
  }
  o << "attention, embeddings, output head, KV cache: " << devices[size_t(attention_device)].id
    << "\n";
  for (size_t d = 0; d < stream_bytes.size(); ++d)
    if (stream_bytes[d] > 0)
      o << "streamed experts (steps of many tokens): " << devices[d].id << " keeps "
        << format_bytes(stream_bytes[d]) << " for them (budget above is what is left)\n";
  std::string states;
  for (size_t d = 0; d < state_bytes.size(); ++d)
    if (state_bytes[d] > 0)
      states += (states.empty() ? "" : ", ") + devices[d].id + " " + format_bytes(state_bytes[d]);
  if (!states.empty())
    o << "recurrent state (" << std::max(1, model.max_sequences) << " sequences): " << states
      << "\n";
  o << "layer  dense    experts per device\n";
  for (size_t l = 0; l < layer_device.size(); ++l) {
    std::snprintf(line, sizeof(line), "%5zu  %-8s", l, devices[size_t(layer_device[l])].id.c_str());
    o << line;
    if (model.layers[l].n_experts == 0) {
      o << " (dense)\n";
      continue;
    }
    for (size_t d = 0; d < devices.size(); ++d) {
      // Show the expert ids as ranges: "cpu0 0-15".
      std::string ranges;
      const auto& a = expert_device[l];
      for (size_t e = 0; e < a.size();) {
        if (a[e] != int(d)) {
          ++e;
          continue;
        }
        size_t f = e;
        while (e + 1 < a.size() && a[e + 1] == int(d)) ++e;
        ranges += (ranges.empty() ? "" : ",") +
                  (f == e ? std::to_string(f) : std::to_string(f) + "-" + std::to_string(e));
        ++e;
      }
      if (!ranges.empty()) o << " " << devices[d].id << "[" << ranges << "]";
    }
    o << "\n";
  }
  std::snprintf(line, sizeof(line), "predicted decode step: %.3f ms (%.0f tokens/s)\n",
                decode_step_seconds * 1e3, 1.0 / decode_step_seconds);
  o << line;
  return o.str();
}

std::string Plan::to_json() const {
  boost::json::object o;
  boost::json::array devs;
  for (size_t d = 0; d < devices.size(); ++d) {
    boost::json::object j;
    j["id"] = devices[d].id;
    j["budget_bytes"] = devices[d].budget_bytes;
    j["weight_bytes"] = weight_bytes[d];
    j["kv_bytes"] = kv_bytes[d];
    j["state_bytes"] = d < state_bytes.size() ? state_bytes[d] : 0;
    j["stream_bytes"] = d < stream_bytes.size() ? stream_bytes[d] : 0;
    j["decode_seconds"] = decode_seconds[d];
    j["read_gbps"] = devices[d].read_gbps;
    j["weight_gbps"] = weight_rate(devices[d]);
    devs.push_back(j);
  }
  o["devices"] = devs;
  o["attention_device"] = devices[size_t(attention_device)].id;
  boost::json::array layers;
  for (size_t l = 0; l < layer_device.size(); ++l) {
    boost::json::object j;
    j["dense"] = devices[size_t(layer_device[l])].id;
    boost::json::array e;
    for (int d : expert_device[l]) e.push_back(boost::json::string(devices[size_t(d)].id));
    j["experts"] = e;
    layers.push_back(j);
  }
  o["layers"] = layers;
  o["decode_step_seconds"] = decode_step_seconds;
  return boost::json::serialize(o);
}

}  // namespace tessera::sched
