// Greedy expert re-placement driven by observed routing and the cost model.
#include "scheduler/balancer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace tessera::sched {

ExpertBalancer::ExpertBalancer(const ModelFootprint& model, bool enabled, int interval,
                               int max_moves)
    : model_(model), enabled_(enabled), interval_(interval), max_moves_(max_moves) {
  counts_.resize(model.layers.size());
  for (size_t l = 0; l < model.layers.size(); ++l)
    counts_[l].assign(size_t(model.layers[l].n_experts), 0);
  tokens_.assign(model.layers.size(), 0);
}

void ExpertBalancer::update_model(const ModelFootprint& model) {
  if (model.layers.size() != model_.layers.size())
    throw std::invalid_argument("balancer: a footprint of " + std::to_string(model.layers.size()) +
                                " layers for a model of " + std::to_string(model_.layers.size()));
  model_ = model;
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
  const size_t n_dev = plan.devices.size(), n_layers = plan.expert_device.size();
  std::vector<uint64_t> used(n_dev);
  for (size_t d = 0; d < n_dev; ++d)
    used[d] = plan.weight_bytes[d] + plan.kv_bytes[d] +
              (d < plan.state_bytes.size() ? plan.state_bytes[d] : 0);
  // Copies kept where experts were moved from (a bit per device: up to 32 devices).
  const bool keep_copies = n_dev <= 32;
  if (keep_copies) {
    plan.expert_copies.resize(n_layers);
    for (size_t l = 0; l < n_layers; ++l)
      plan.expert_copies[l].resize(plan.expert_device[l].size(), 0u);
  }
  auto has_copy = [&](size_t l, size_t e, size_t d) {
    return keep_copies && (plan.expert_copies[l][e] >> d & 1u) != 0;
  };
  // Bytes of copies per device and layer: what a device may drop to make room for an upload.
  std::vector<std::vector<uint64_t>> copy_bytes(n_dev, std::vector<uint64_t>(n_layers, 0));
  std::vector<uint64_t> copy_total(n_dev, 0);
  for (size_t l = 0; l < n_layers && keep_copies; ++l)
    for (size_t e = 0; e < plan.expert_device[l].size(); ++e)
      for (size_t d = 0; d < n_dev; ++d)
        if (has_copy(l, e, d)) {
          copy_bytes[d][l] += model_.layers[l].expert_bytes;
          copy_total[d] += model_.layers[l].expert_bytes;
        }
  // Whether `to` can take `bytes` more for layer l, dropping copies of other layers if need be.
  auto fits = [&](size_t to, uint64_t bytes, size_t l) {
    return used[to] + bytes <= plan.devices[to].budget_bytes + (copy_total[to] - copy_bytes[to][l]);
  };

  // Each round takes the candidate with the most predicted time saved per byte uploaded (a move
  // to a device holding a copy uploads nothing): one expert, or every expert a device serves of
  // one layer (emptying a layer on a device also saves that device's launches and round trip for
  // the layer, which single moves barely show).
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
    for (size_t l = 0; l < n_layers; ++l) {
      auto& assign = plan.expert_device[l];
      const uint64_t eb = model_.layers[l].expert_bytes;
      for (size_t e = 0; e < assign.size(); ++e) {
        if (observed[l][e] <= 0) continue;
        const int from = assign[e];
        for (size_t to = 0; to < n_dev; ++to) {
          const uint64_t up = has_copy(l, e, to) ? 0 : eb;
          if (int(to) == from || (up > 0 && !fits(to, up, l))) continue;
          assign[e] = int(to);
          predict(plan, model_, &observed);
          consider({int(l), from, int(to), int(e)}, up);
          assign[e] = from;
        }
      }
      for (size_t from = 0; from < n_dev; ++from) {
        const int n = plan.experts_on(int(l), int(from));
        if (n < 2) continue;  // single moves cover it
        for (size_t to = 0; to < n_dev; ++to) {
          if (to == from) continue;
          uint64_t up = 0;
          for (size_t e = 0; e < assign.size(); ++e)
            if (assign[e] == int(from) && !has_copy(l, e, to)) up += eb;
          if (up > 0 && !fits(to, up, l)) continue;
          const auto saved = assign;
          for (auto& a : assign)
            if (a == int(from)) a = int(to);
          predict(plan, model_, &observed);
          consider({int(l), int(from), int(to), -1}, up);
          assign = saved;
        }
      }
    }
    if (chosen.layer < 0) break;
    const size_t cl = size_t(chosen.layer), to = size_t(chosen.to), from = size_t(chosen.from);
    auto& assign = plan.expert_device[cl];
    const uint64_t eb = model_.layers[cl].expert_bytes;
    int uploaded = 0;
    for (size_t e = 0; e < assign.size(); ++e) {
      const bool take = chosen.expert < 0 ? assign[e] == chosen.from : int(e) == chosen.expert;
      if (!take) continue;
      const bool had_copy = has_copy(cl, e, to);
      assign[e] = chosen.to;
      if (had_copy) {
        plan.expert_copies[cl][e] &= ~(1u << to);
        copy_bytes[to][cl] -= eb;
        copy_total[to] -= eb;
      } else {
        used[to] += eb;
        plan.weight_bytes[to] += eb;
        ++uploaded;
        ++uploads_;
      }
      if (keep_copies) {  // the source keeps its weights as a copy
        plan.expert_copies[cl][e] |= 1u << from;
        copy_bytes[from][cl] += eb;
        copy_total[from] += eb;
      } else {
        used[from] -= eb;
        plan.weight_bytes[from] -= eb;
      }
      moves.push_back({chosen.layer, int(e), chosen.from, chosen.to, !had_copy});
      ++moves_;
    }
    // Over budget on `to`: drop its copies of other layers, least used first.
    while (used[to] > plan.devices[to].budget_bytes) {
      int dl = -1, de = -1;
      for (size_t l = 0; l < n_layers; ++l) {
        if (l == cl) continue;
        for (size_t e = 0; e < plan.expert_device[l].size(); ++e)
          if (has_copy(l, e, to) && (dl < 0 || observed[l][e] < observed[size_t(dl)][size_t(de)])) {
            dl = int(l);
            de = int(e);
          }
      }
      if (dl < 0) break;  // fits() made sure it cannot come to this
      const uint64_t db = model_.layers[size_t(dl)].expert_bytes;
      plan.expert_copies[size_t(dl)][size_t(de)] &= ~(1u << to);
      copy_bytes[to][size_t(dl)] -= db;
      copy_total[to] -= db;
      used[to] -= db;
      plan.weight_bytes[to] -= db;
      moves.push_back({dl, de, chosen.to, -1, false});
      ++dropped_;
    }
    best = chosen.time;
    spdlog::info(
        "balancer: layer {} {} {} -> {} ({} uploaded, copies kept on {}; predicted step {:.3f} ms)",
        chosen.layer,
        chosen.expert < 0 ? std::string("all experts") : "expert " + std::to_string(chosen.expert),
        plan.devices[from].id, plan.devices[to].id, uploaded,
        keep_copies ? plan.devices[from].id : std::string("none"), best * 1e3);
  }
  predict(plan, model_, &observed);
  return moves;
}

}  // namespace tessera::sched
