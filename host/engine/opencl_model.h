// The OpenCL forward pass: a model's layers as device kernels on the devices a Plan assigns, over a
// paged KV cache. One forward step takes a batch of sequences at different positions (prefill
// chunks and decode tokens mixed), which continuous batching relies on.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "devices/device.h"
#include "host/kv/kv_batch.h"
#include "host/kv/paged_kv_cache.h"
#include "host/model/model_spec.h"
#include "host/ops/device/matmul.h"
#include "host/ops/device/step_program.h"
#include "host/ops/reference/routing.h"
#include "scheduler/balancer.h"
#include "scheduler/executor.h"
#include "scheduler/planner.h"

namespace tessera::engine {

struct EngineOptions {
  int max_batch_tokens = 256;  // tokens of one forward step (prefill is chunked to this)
  int max_sequences = 8;       // sequences of one step
  int max_logit_rows = 0;      // logit rows of one step; 0: max_sequences (perplexity wants more)
  int max_context = 0;         // tokens per sequence; 0: the model's training context (capped 4096)
  int kv_block_size = 16;
  int kv_blocks = 0;  // 0: enough for max_sequences sequences of max_context tokens
  bool balancer = false;
  bool profile = false;  // time every launch with profiling events (EngineStats::device_op_seconds)
  // Fused launches (each has a portability-matrix case); switching one off runs the separate
  // kernels instead, for A/B measurements. Also off by name in $TESSERA_NO_FUSE (comma list:
  // qkv, norm_route, combine_norm, swiglu).
  struct Fusion {
    bool qkv = true;           // q/k/v one matrix; norms + RoPE + KV store in one launch
    bool norm_route = true;    // FFN norm + F32 router + top-k
    bool combine_norm = true;  // MoE combine + next layer's attention norm
    bool swiglu = true;        // SwiGLU folded into the down projection (GPUs only)
  } fuse;
  // clFlush after each layer's attention so the device starts while the host enqueues the rest
  // ("flush" in $TESSERA_NO_FUSE turns it off).
  bool flush_per_layer = true;
  // Record each batch shape's step once as an ops::StepProgram and replay it for later steps of
  // that shape (same tokens, sequences, logit rows); off: every step enqueues its ops afresh.
  // Steps with profiling or the expert balancer on always enqueue afresh.
  bool replay = true;
  // Called while weights upload: (bytes done, bytes total).
  std::function<void(uint64_t, uint64_t)> progress;
};

// One forward step's batch. Tokens of one sequence are consecutive, positions increasing.
struct StepBatch {
  std::vector<kv::SeqId> seqs;      // the sequences of the step (row i = seqs[i])
  std::vector<int32_t> tokens;      // token ids
  std::vector<int32_t> token_seq;   // row in `seqs` of each token
  std::vector<int32_t> token_pos;   // position of each token in its sequence
  std::vector<int32_t> logit_rows;  // tokens whose logits are wanted, in output order
};

// Time and counters per op family and device, for the run summary.
struct EngineStats {
  std::map<std::string, double> op_seconds;         // wall time of prefill and decode steps
  std::map<std::string, double> device_op_seconds;  // device time per op family (profile option)
  std::vector<double> device_seconds;               // per plan device: busy time of expert work
  std::vector<uint64_t> expert_hits;                // per plan device: expert selections served
  uint64_t balancer_moves = 0;
  uint64_t steps = 0;
};

// Thread-safety: one engine thread drives it (it owns every device queue it uses).
class OpenClModel {
 public:
  // Uploads the weights of `spec` (whose GgufFile must outlive this) to the devices of `plan`
  // (ids resolved in `registry`) and allocates the KV cache on each layer's device.
  OpenClModel(const model::ModelSpec& spec, const DeviceRegistry& registry, sched::Plan plan,
              const sched::ModelFootprint& footprint, EngineOptions options);
  ~OpenClModel();

  const model::ModelSpec& spec() const { return spec_; }
  kv::PagedKvCache& kv_cache() { return *kv_; }
  const sched::Plan& plan() const { return plan_; }
  // The cost model's view of the model: bytes from the spec, launch counts of one decode token
  // counted at construction from the step's own code recorded into a count-only step program
  // (embedding, each layer's dense part and experts, output). The balancer and plan()'s predicted
  // times use these.
  const sched::ModelFootprint& footprint() const { return footprint_; }
  const EngineStats& stats() const { return stats_; }
  const EngineOptions& options() const { return options_; }
  uint64_t uploaded_bytes() const { return uploaded_bytes_; }

  // Runs one step: writes the tokens' K/V (their positions must be reserved in the KV cache) and
  // returns logits [logit_rows.size()][n_vocab]. Throws on inconsistent batches.
  std::vector<float> forward(const StepBatch& batch);

  // Recorded step programs kept for replay (one per batch shape seen recently), and how many steps
  // were recorded and replayed.
  size_t cached_programs() const { return programs_.size(); }
  // The program of the latest replayable step (null before one); valid until the next forward.
  const ops::StepProgram* latest_program() const;
  uint64_t recorded_steps() const { return recorded_steps_; }
  uint64_t replayed_steps() const { return replayed_steps_; }

 private:
  struct DeviceCtx;
  struct LayerWeights;
  struct CachedProgram;
  // Enqueues (or, while a step program records, appends) the step's work from the embedding to
  // the logits in home.logits; the batch is already on the devices.
  void enqueue_step(const StepBatch& b, int n, bool decode);
  void upload_layer_experts(int layer);
  // Records a one-token decode step count-only and sets footprint_'s launch counts from it.
  void count_launches();
  // routed: the router's top-k of the tokens is already in home.topk_ids / topk_w. next_norm (may
  // be null): the next layer's attention norm on this device; returns true when it was applied
  // (home.xn holds the next layer's normed input).
  bool moe_layer(int layer, DeviceCtx& home, int n_tokens, bool routed, cl_mem next_norm);
  // The rest of a MoE layer whose experts are on several devices, from the router's choice on the
  // host (a host-sync point of the step).
  void moe_layer_across_devices(int layer, DeviceCtx& home, int n_tokens);
  // gate/up, SwiGLU and down of n_pairs (token, local expert) pairs of a shard into c.y.
  void expert_ffn(DeviceCtx& c, const LayerWeights& w, int device, cl_mem pair_token,
                  cl_mem pair_expert, int x_rows, int n_pairs);
  void copy_between(DeviceCtx& from, cl_mem src, size_t src_off, DeviceCtx& to, cl_mem dst,
                    size_t dst_off, size_t bytes);
  DeviceCtx& ctx(int plan_device) { return *ctxs_[size_t(plan_device)]; }

  model::ModelSpec spec_;
  sched::Plan plan_;
  sched::ModelFootprint footprint_;
  EngineOptions options_;
  std::vector<std::unique_ptr<DeviceCtx>> ctxs_;
  std::vector<std::unique_ptr<LayerWeights>> layers_;
  std::unique_ptr<kv::PagedKvCache> kv_;
  std::unique_ptr<sched::Executor> executor_;
  std::unique_ptr<sched::ExpertBalancer> balancer_;
  EngineStats stats_;
  uint64_t uploaded_bytes_ = 0, total_bytes_ = 0;
  ClMem embd_table_, output_norm_;  // on the attention device
  ops::DeviceWeight output_;
  reference::RoutingConfig routing_;
  // Router choices of layers routed on one device, copied without blocking for the balancer.
  struct PendingChoice {
    int layer = 0;
    std::vector<int32_t> ids;
  };
  std::deque<PendingChoice> pending_choices_;  // deque: elements stay put while reads are queued
  const float* xn_src_ = nullptr;  // the home device's normed activations, read for remote experts
  std::vector<double> lane_seconds_;  // per device, written by its executor lane
  std::vector<std::unique_ptr<CachedProgram>> programs_;  // most recently used last
  // While count_launches records: the program's launch count after the embedding and after each
  // layer (enqueue_step appends).
  std::vector<size_t>* step_marks_ = nullptr;
  uint64_t recorded_steps_ = 0, replayed_steps_ = 0;
};

// The planner's view of a model: bytes per layer and per expert.
sched::ModelFootprint footprint_of(const model::ModelSpec& spec, int context_tokens);

}  // namespace tessera::engine
