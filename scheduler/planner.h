// Placement: which device holds each layer's dense weights and each routed expert, within the
// memory budgets, from measured device costs. A plan is a printable, reproducible value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/config.h"

namespace tessera::sched {

// What the planner knows of a device: measured speed (devices/probes) and its memory budget.
struct DeviceCost {
  std::string id;
  DeviceType type = DeviceType::kCpu;
  double read_gbps = 1;  // streaming read, GB/s
  double fp32_gflops = 1;
  double launch_us = 10;  // per kernel launch in a stream of launches (a replayed step)
  double h2d_gbps = 1, d2h_gbps = 1;
  uint64_t memory_bytes = 0;  // device global memory
  uint64_t budget_bytes = 0;  // what the plan may use (config budget, default 90% of memory)
  double sync_us = 20;        // a host wait: enqueue + finish of one kernel
  // How fast this device's one-token matmul kernel streams the model's weights (GB/s, measured in
  // the model's main weight format and row length: the engine's plan_for); 0: unmeasured, the
  // planner takes read_gbps. On CPUs the 4-bit GEMV is bound by its decode, well below read_gbps.
  double weight_gbps = 0;
  // The launch probe's figure behind launch_us (0: none); launch_us may instead hold what the
  // engine's own decode launches cost there (calibrated_launch_us).
  double probe_launch_us = 0;
};

// Cost model (DESIGN.md): time(op) ~= max(bytes / bandwidth, flops / throughput) + launches *
// latency.
double op_seconds(const DeviceCost& d, double bytes, double flops, int launches);
// The same for weight bytes: streamed at weight_rate(d).
double weight_op_seconds(const DeviceCost& d, double bytes, double flops, int launches);
// weight_gbps where measured, else read_gbps.
double weight_rate(const DeviceCost& d);
// Moving `bytes` between two devices through the host (d2h on one, h2d on the other) plus
// latencies.
double transfer_seconds(const DeviceCost& from, const DeviceCost& to, double bytes);

// The model as the planner sees it: bytes, not tensors.
struct ModelFootprint {
  struct Layer {
    uint64_t dense_bytes = 0;   // attention, norms, router, dense FFN, shared experts
    uint64_t expert_bytes = 0;  // bytes of ONE routed expert (gate + up + down)
    int n_experts = 0;          // 0 for a dense layer
    // Kernel launches of one decode token: the dense part on the layer's device, and the routed
    // experts on each device that runs any. The engine counts them from its recorded step
    // (OpenClModel::launch_counts); these defaults only serve plans made before a model is built.
    int dense_launches = 10;
    int expert_launches = 4;
    // Fixed recurrent state one sequence keeps in this layer (Mamba2 / Gated DeltaNet mixers; 0
    // for attention), held on the layer's device for each of max_sequences sequences; a decode
    // token reads and writes it (predict() counts 2 x state_bytes beside the weights).
    uint64_t state_bytes = 0;
  };
  std::vector<Layer> layers;
  uint64_t embedding_bytes = 0;  // token embedding table
  uint64_t output_bytes = 0;     // output norm + output head (0 extra when tied)
  int embedding_launches = 1;    // per decode step, counted like the layers' launches
  int output_launches = 2;
  int n_expert_used = 0;
  int n_embd = 0;
  // The ggml type id holding most of the matrices' bytes (-1: unknown): the format in which the
  // engine measures each device's weight streaming rate (DeviceCost::weight_gbps).
  int weight_type = -1;
  uint64_t kv_bytes_per_token = 0;  // all layers, in the configured KV format
  int context_tokens = 4096;        // KV capacity to reserve when the config sets no KV budget
  int max_sequences = 1;            // sequences whose recurrent state is reserved
};

struct Plan {
  std::vector<DeviceCost> devices;              // the selected devices
  int attention_device = 0;                     // embeddings, output head, KV cache
  std::vector<int> layer_device;                // dense part of each layer
  std::vector<std::vector<int>> expert_device;  // [layer][expert] -> device index
  // Copies the balancer keeps (ExpertBalancer::rebalance): [layer][expert] -> bit d set when
  // device d holds the expert's weights without serving it (expert_device[l][e] serves it). Empty
  // (or a layer's row empty) when there are none. Counted in weight_bytes.
  std::vector<std::vector<uint32_t>> expert_copies;
  std::vector<uint64_t> weight_bytes;           // per device
  std::vector<uint64_t> kv_bytes;               // per device
  std::vector<uint64_t> state_bytes;            // recurrent state of the layers there, per device
  // Per device: room kept for streamed experts (placement.stream_experts): the largest layer's
  // experts, on a device whose layers have experts elsewhere; the budget of devices[d] is what is
  // left for weights and KV after it.
  std::vector<uint64_t> stream_bytes;
  std::vector<double> decode_seconds;           // predicted busy time per decode token, per device
  double decode_step_seconds = 0;  // predicted time of one decode token (critical path)

  int experts_on(int layer, int device) const;  // experts the device serves in the layer
  // Whether device d holds expert e of layer l (serves it or keeps a copy).
  bool holds(int layer, int expert, int device) const;
  std::string to_text(const ModelFootprint& model) const;  // the `tessera plan` table
  std::string to_json() const;
};

// Builds the plan. Throws ConfigError when the config cannot be met (an unknown device in a pin,
// shares that sum to zero) and PlanError when the model does not fit, saying how much memory is
// missing on which device.
class PlanError : public TesseraError {
 public:
  using TesseraError::TesseraError;
};
Plan make_plan(const ModelFootprint& model, const std::vector<DeviceCost>& devices,
               const Config& config);

// The weight streaming time (bytes at weight_rate, recurrent state at read_gbps) of one decode
// token on each of the plan's devices: predict()'s decode_seconds with every launch priced at 0
// (`expert_load` as for predict).
std::vector<double> streaming_seconds(
    const Plan& plan, const ModelFootprint& model,
    const std::vector<std::vector<double>>* expert_load = nullptr);

// What one launch of a device's decode step costs (us), from profiled decode steps: the device's
// kernels took `busy_seconds` over `launches` launches (per step), of which the planner prices
// `weight_seconds` as streaming their bytes (streaming_seconds). A launch costs at least
// `stream_us` (the probe's pipelined empty launch); what the kernels take beyond streaming their
// bytes (tails that wait on other work groups, latency-bound attention) is spread over the
// launches. 0 when there is nothing to go by (no launches, or figures not finite).
double calibrated_launch_us(double stream_us, double busy_seconds, double launches,
                            double weight_seconds);

// Predicted time of one decode token for a given placement (used by the planner and the balancer).
// `expert_load[l][e]`, when given, is the observed fraction of tokens routing to expert e of layer
// l (sums to n_expert_used per layer); otherwise uniform routing is assumed.
void predict(Plan& plan, const ModelFootprint& model,
             const std::vector<std::vector<double>>* expert_load = nullptr);

}  // namespace tessera::sched
