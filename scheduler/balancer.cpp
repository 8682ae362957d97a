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
  for (size_t d = 0; d < used.size(); ++d)
    used[d] = plan.weight_bytes[d] + plan.kv_bytes[d] +
              (d < plan.state_bytes.size() ? plan.state_bytes[d] : 0);

  // Each round takes the candidate with the most predicted time saved per byte moved: one expert,
  // or every expert a device holds of one layer (emptying a layer on a device also saves that
  // device's launches and round trip for the layer, which single moves barely show).
  for (int m = 0; m < max_moves_; ++m) {
    struct Candidate {
      int layer = -1, from = -1, to = -1, expert = -1;  // expert -1: all of `from`'s in the layer
      double time = 0, per_byte = 0;
    } chosen;
    chosen.time = best;
    auto consider = [&](const Candidate& c, uint64_t bytes) {
      const double gain = best - plan.decode_step_seconds;
      if (gain <= best * 0.001) return;
      const double per_byte = gain / double(std::max<uint64_t>(bytes, 1));
      if (chosen.layer < 0 || per_byte > chosen.per_byte) {
        chosen = c;
        chosen.time = plan.decode_step_seconds;
        chosen.per_byte = per_byte;
      }
    };
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
          consider({int(l), from, int(to), int(e)}, eb);
          assign[e] = from;
        }
      }
      for (size_t from = 0; from < plan.devices.size(); ++from) {
        const int n = plan.experts_on(int(l), int(from));
        if (n < 2) continue;  // single moves cover it
        for (size_t to = 0; to < plan.devices.size(); ++to) {
          if (to == from || used[to] + uint64_t(n) * eb > plan.devices[to].budget_bytes) continue;
          const auto saved = assign;
          for (auto& a : assign)
            if (a == int(from)) a = int(to);
          predict(plan, model_, &observed);
          consider({int(l), int(from), int(to), -1}, uint64_t(n) * eb);
          assign = saved;
        }
      }
    }
    if (chosen.layer < 0) break;
    auto& assign = plan.expert_device[size_t(chosen.layer)];
    const uint64_t eb = model_.layers[size_t(chosen.layer)].expert_bytes;
    for (size_t e = 0; e < assign.size(); ++e) {
      const bool take = chosen.expert < 0 ? assign[e] == chosen.from : int(e) == chosen.expert;
      if (!take) continue;
      assign[e] = chosen.to;
      used[size_t(chosen.from)] -= eb;
      used[size_t(chosen.to)] += eb;
      plan.weight_bytes[size_t(chosen.from)] -= eb;
      plan.weight_bytes[size_t(chosen.to)] += eb;
      moves.push_back({chosen.layer, int(e), chosen.from, chosen.to});
      ++moves_;
    }
    best = chosen.time;
    spdlog::info(
        "balancer: layer {} {} {} -> {} (predicted step {:.3f} ms)", chosen.layer,
        chosen.expert < 0 ? std::string("all experts") : "expert " + std::to_string(chosen.expert),
        plan.devices[size_t(chosen.from)].id, plan.devices[size_t(chosen.to)].id, best * 1e3);
  }
  predict(plan, model_, &observed);
  return moves;
}

}  // namespace tessera::sched
