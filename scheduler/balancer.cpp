// Greedy expert re-placement driven by observed routing and the cost model.
#include "scheduler/balancer.h"

#include <spdlog/spdlog.h>

namespace tessera::sched {

ExpertBalancer::ExpertBalancer(const ModelFootprint& model, bool enabled, int interval,
                               int max_moves)
    : model_(model), enabled_(enabled), interval_(interval), max_moves_(max_moves) {
  counts_.resize(model.layers.size());
  for (size_t l = 0; l < model.layers.size(); ++l)
    counts_[l].assign(size_t(model.layers[l].n_experts), 0);
  tokens_.assign(model.layers.size(), 0);
}

void ExpertBalancer::record(int layer, const int32_t* experts, int count) {
  auto& c = counts_[size_t(layer)];
  for (int i = 0; i < count; ++i)
    if (experts[i] >= 0 && size_t(experts[i]) < c.size()) ++c[size_t(experts[i])];
  ++tokens_[size_t(layer)];
}

void ExpertBalancer::record_device_seconds(int device, double seconds) {
  if (size_t(device) >= device_seconds_.size()) device_seconds_.resize(size_t(device) + 1, 0.0);
  device_seconds_[size_t(device)] += seconds;
}

std::vector<std::vector<double>> ExpertBalancer::load() const {
  std::vector<std::vector<double>> out(counts_.size());
  for (size_t l = 0; l < counts_.size(); ++l) {
    out[l].assign(counts_[l].size(), 0.0);
    if (tokens_[l] == 0) {
      for (auto& v : out[l])
        v = counts_[l].empty() ? 0.0 : double(model_.n_expert_used) / double(counts_[l].size());
      continue;
    }
    for (size_t e = 0; e < counts_[l].size(); ++e)
      out[l][e] = double(counts_[l][e]) / double(tokens_[l]);
  }
  return out;
}

std::vector<ExpertMove> ExpertBalancer::rebalance(Plan& plan) {
  std::vector<ExpertMove> moves;
  if (!enabled_ || plan.devices.size() < 2 || steps_ - last_rebalance_ < uint64_t(interval_))
    return moves;
  last_rebalance_ = steps_;
  const auto observed = load();
  predict(plan, model_, &observed);
  double best = plan.decode_step_seconds;
  std::vector<uint64_t> used(plan.devices.size());
  for (size_t d = 0; d < used.size(); ++d) used[d] = plan.weight_bytes[d] + plan.kv_bytes[d];

  for (int m = 0; m < max_moves_; ++m) {
    ExpertMove chosen;
    double chosen_time = best;
    // Try every (layer, expert, target): small models make this cheap; large ones are bounded by
    // layers * experts * devices evaluations of the cost model per move.
    for (size_t l = 0; l < plan.expert_device.size(); ++l) {
      auto& assign = plan.expert_device[l];
      const uint64_t eb = model_.layers[l].expert_bytes;
      for (size_t e = 0; e < assign.size(); ++e) {
        if (observed[l][e] <= 0) continue;
        const int from = assign[e];
        for (size_t to = 0; to < plan.devices.size(); ++to) {
          if (int(to) == from || used[to] + eb > plan.devices[to].budget_bytes) continue;
          assign[e] = int(to);
          predict(plan, model_, &observed);
          if (plan.decode_step_seconds < chosen_time * 0.999) {
            chosen_time = plan.decode_step_seconds;
            chosen = {int(l), int(e), from, int(to)};
          }
          assign[e] = from;
        }
      }
    }
    if (chosen_time >= best) break;
    plan.expert_device[size_t(chosen.layer)][size_t(chosen.expert)] = chosen.to;
    const uint64_t eb = model_.layers[size_t(chosen.layer)].expert_bytes;
    used[size_t(chosen.from)] -= eb;
    used[size_t(chosen.to)] += eb;
    plan.weight_bytes[size_t(chosen.from)] -= eb;
    plan.weight_bytes[size_t(chosen.to)] += eb;
    best = chosen_time;
    moves.push_back(chosen);
    ++moves_;
    spdlog::info("balancer: layer {} expert {} {} -> {} (predicted step {:.3f} ms)", chosen.layer,
                 chosen.expert, plan.devices[size_t(chosen.from)].id,
                 plan.devices[size_t(chosen.to)].id, best * 1e3);
  }
  predict(plan, model_, &observed);
  return moves;
}

}  // namespace tessera::sched
