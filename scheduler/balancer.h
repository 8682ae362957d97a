// The expert balancer: counts which experts tokens choose and how long each device takes, and
// between steps moves hot experts to where they lower the predicted step time (cf. DeepSeek's
// expert-parallel load balancer). Can be switched off; every move is logged and counted.
#pragma once

#include <cstdint>
#include <vector>

#include "scheduler/planner.h"

namespace tessera::sched {

// One change of an expert's placement. A move makes `to` serve the expert: its weights are
// uploaded there unless `to` already held a copy (uploaded false), and `from` keeps its weights as
// a copy (Plan::expert_copies) so that serving from it again uploads nothing. A drop (to -1)
// frees a copy `from` held, to make room for an upload there.
struct ExpertMove {
  int layer = 0, expert = 0;
  int from = 0, to = 0;  // device indices in the plan; to -1: a dropped copy
  bool uploaded = true;
};

class ExpertBalancer {
 public:
  // `interval`: steps between rebalancing attempts; `max_moves`: moves per attempt (each costs an
  // upload of one expert's weights).
  ExpertBalancer(const ModelFootprint& model, bool enabled, int interval = 16, int max_moves = 4);

  bool enabled() const { return enabled_; }
  // The model's footprint again, once the engine has counted its launches (the balancer predicts
  // step times with it); throws std::invalid_argument for another layer count.
  void update_model(const ModelFootprint& model);
  // Records one token's choice of `count` experts in `layer`. Engine thread only.
  void record(int layer, const int32_t* experts, int count);
  void record_device_seconds(int device, double seconds);
  void end_step() { ++steps_; }

  // Every `interval` steps: greedy moves of experts from the busiest device of a layer to the one
  // whose predicted step time drops most, within free budget (counting the copies a device may
  // drop). A moved expert's weights stay on the device it left, as a copy; a move to a device
  // holding a copy costs no upload, so it ranks first. Applies them to `plan` and returns them,
  // drops included (the engine uploads the weights of the layers touched). Empty when disabled
  // or nothing helps.
  std::vector<ExpertMove> rebalance(Plan& plan);

  // Observed routing fractions per layer (sum to n_expert_used where counted).
  std::vector<std::vector<double>> load() const;
  const std::vector<double>& device_seconds() const { return device_seconds_; }
  uint64_t moves() const { return moves_; }
  uint64_t uploads() const { return uploads_; }         // moves that uploaded weights
  uint64_t dropped_copies() const { return dropped_; }  // copies freed for room
  uint64_t selections(int layer, int expert) const {
    return counts_[size_t(layer)][size_t(expert)];
  }

 private:
  ModelFootprint model_;
  bool enabled_;
  int interval_, max_moves_;
  uint64_t steps_ = 0, last_rebalance_ = 0, moves_ = 0, uploads_ = 0, dropped_ = 0;
  std::vector<std::vector<uint64_t>> counts_;
  std::vector<uint64_t> tokens_;  // tokens routed per layer
  std::vector<double> device_seconds_;
};

}  // namespace tessera::sched
