// The routed MoE FFN: RMSNorm, router + top-k (one fused launch with an F32 router), the selected
// experts' SwiGLU FFNs, the weighted combine into the residual stream (fused with the next layer's
// input norm when that layer is on the same device). Experts live where the plan puts them: all on
// the layer's device (no host round trip) or spread over several devices, which then run their
// experts concurrently through the executor.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>

#include "host/engine/layers/layer.h"
#include "host/ops/reference/ffn.h"
#include "host/ops/reference/routing.h"
#include "scheduler/balancer.h"
#include "scheduler/executor.h"
#include "scheduler/planner.h"

namespace tessera::engine {

// The router's configuration of `spec` (softmax gating, the architecture's top-k normalization,
// expert_weights_scale).
reference::RoutingConfig routing_config(const model::ModelSpec& spec);

class MoeFfn;

// What the MoE layers of an OpenClModel share across its devices. Owned by the model; the layers
// hold a pointer. Engine thread only (the executor lanes touch only their own device's entries).
struct MoeRuntime {
  const sched::Plan* plan = nullptr;  // expert placement (the balancer moves experts between steps)
  std::vector<std::unique_ptr<DeviceCtx>>* devices = nullptr;  // by plan index
  sched::Executor* executor = nullptr;
  sched::ExpertBalancer* balancer = nullptr;
  EngineStats* stats = nullptr;
  // Router choices of layers routed on one device, copied without blocking for the balancer and
  // handed to it after the step (end_step).
  struct PendingChoice {
    int layer = 0;
    const int32_t* ids = nullptr;  // `count` ids: in choice_memory, or in `own`
    size_t count = 0;
    std::vector<int32_t> own;
  };
  std::deque<PendingChoice> pending_choices;  // deque: elements stay put while reads are queued
  // Whether this step's layers copy their choice (set per step: every step of several tokens, one
  // in kChoiceSampleSteps of the one-token steps).
  bool count_choices = true;
  static constexpr uint64_t kChoiceSampleSteps = 8;
  // Where those copies land, per device (plan index; null: none, copies go to pageable `own`
  // vectors): pinned host memory (PinnedBytes), two slots (the step's, choice_slot, and one for the
  // step in flight beside it) of [layer][choice_ints]. A read into pageable memory may hold the
  // host until the device's queue reaches it (NVIDIA's: 5.5% of the H100's decode with every
  // expert home, measured), one into pinned memory runs on its own.
  std::vector<std::unique_ptr<PinnedBytes>> choice_memory;
  size_t choice_ints = 0;  // per layer and slot: a step's most pairs
  int choice_layers = 0, choice_slot = 0;
  // The place of `layer`'s choice of this step on device `d`, or null.
  int32_t* choice_place(int d, int layer) const;
  std::vector<double> lane_seconds;           // per device, written by its executor lane
  std::vector<double> lane_wait_seconds;      // of lane_seconds: waiting for the device's result
  SyncTiming* sync_timing = nullptr;          // the running step kind's (set per step)
  // Every layer's routed FFN by layer index (null where none): a streamed layer finds the next.
  std::vector<MoeFfn*> layers;
  // Streamed experts written ahead for a later layer of the running step (while an earlier layer
  // computes), by layer: the event of the write that layer's launches wait for.
  std::map<int, ClEvent> stream_writes;

  // Before a step is enqueued: no write issued ahead by an earlier (failed) step is taken for one
  // of this step's (waits for any left, then forgets them).
  void begin_step();
  // After a step's queues finished: the first `count` pending choices (the step's; any after them
  // belong to a step still in flight) go to the balancer.
  void end_step(int experts_per_token, size_t count = SIZE_MAX);
};

class MoeFfn final : public Ffn {
 public:
  // `moe` may be null when this layer runs on the reference path only.
  MoeFfn(const model::ModelSpec& spec, int layer, MoeRuntime* moe);

  model::FfnKind kind() const override { return model::FfnKind::kMoe; }
  void upload(DeviceCtx& c, WeightUploader& up, const EngineOptions& options) override;
  // Slices the experts onto the devices the plan assigns them to (again after balancer moves).
  void upload_experts(WeightUploader& up);
  bool forward(DeviceCtx& c, const LayerStep& s, cl_mem next_norm) override;
  // forward() in two halves, for a kind that adds work between them (SharedMoeFfn): the FFN norm
  // of c.x into c.xn with the router's top-k, then the experts and their combine into c.x (fused
  // with next_norm as forward()).
  void route(DeviceCtx& c, const LayerStep& s);
  // The routing for the attention's output projection to run in its launch
  // (MatmulOp::run_route_tail): decode-sized steps on the layer's device with an F32 router and no
  // router bias, when the fusion is on; null otherwise. route() then does nothing (s.routed).
  // with_experts (forward() follows, nothing between routing and experts): one-token steps with
  // every expert on c may also run the experts and their combine (+ next_norm) in that launch
  // (RouteTail::ffn, EngineOptions::Fusion::route_ffn); forward() then only does the host's
  // bookkeeping. With next_norm, next (the next layer's input projection, when its weight is one
  // the launch takes: MatmulOp::can_route_next) runs there too, and with it next.attention; the
  // result's ffn->next and ffn->attention say whether they do.
  const ops::RouteTail* route_tail(const DeviceCtx& c, const LayerStep& s,
                                   bool with_experts = false, cl_mem next_norm = nullptr,
                                   InputProjection next = {});
  bool experts(DeviceCtx& c, const LayerStep& s, cl_mem next_norm);
  MoeFfn* routed() override { return this; }
  // Kernel launches of one device's share of this layer's experts for one token (its pairs):
  // gate|up, SwiGLU (unless folded), down, combine (unless in down); counted (not run) on a device
  // holding some.
  size_t count_expert_launches(int experts_per_token);
  // Every expert on the layer's device: they run inside the step (else from a host-sync point).
  bool experts_all_on_home() const { return dev_.all_on_home; }
  void reference_forward(std::span<float> x) const override;

 private:
  struct Shard {
    std::vector<int32_t> experts;  // global ids held by this device, ascending
    std::vector<int32_t> local;    // global id -> local index, -1 when not here
    // gate_up: each expert's gate rows then its up rows (one launch) when both share a format.
    ops::DeviceWeight gate_up, gate, up, down;
    // gpt-oss's expert biases in local expert order (empty when none): gate_up_b holds each
    // expert's gate then up bias (matching gate_up's rows), gate_b / up_b the separate ones.
    ClMem gate_up_b, gate_b, up_b, down_b;
    // The gate|up launch applies SwiGLU itself (DeviceCtx::glu_out; not for gpt-oss's clamped
    // SwiGLU or biased gate|up rows), decided at upload.
    bool glu = false;
    // Decode-sized steps run the combine in the down launch (DeviceCtx::combine_in_down; not
    // with gpt-oss's down bias), decided at upload.
    bool combine = false;
    // Decode-sized steps run gate|up, SwiGLU, down and the combine in one launch
    // (DeviceCtx::expert_ffn, MatmulOp::run_expert_ffn; needs glu and combine and one format
    // for gate|up and down), decided at upload.
    bool ffn = false;
    // One-token steps may run the experts in the output projection's launch
    // (MatmulOp::can_route_ffn): with ffn on CPUs; on GPUs (opt-in, Fusion::route_ffn_gpu), in
    // their own shape, with the combine in down (no down bias), gate|up in one launch without
    // biases and not gpt-oss's SwiGLU. Decided at upload.
    bool in_route = false;
  };
  // gate/up, SwiGLU and down of n_pairs (token, local expert) pairs of a shard into c.y. grouped:
  // the pairs are sorted by expert (each expert has at most x_rows of them, one per token).
  // `combine` (pairs in token order, s.combine): the down launch also runs it (or, with s.ffn
  // and few enough pairs, the one launch that runs the whole FFN); returns whether it did (else
  // the caller's combine launch follows).
  bool expert_ffn(DeviceCtx& c, const Shard& s, cl_mem pair_token, cl_mem pair_expert, int x_rows,
                  int n_pairs, bool grouped = false, const ops::ExpertCombine* combine = nullptr);
  // Whether a step of n tokens runs shard s's combine in its down launch (s.combine, pairs in
  // token order, few enough tokens for the launch's counters).
  static bool combines_in_down(const Shard& s, bool grouped, int n);
  // The combine of n tokens' pairs into `out` (+ next_norm into xn when set), for expert_ffn.
  ops::ExpertCombine combine_args(cl_mem out, bool accumulate, cl_mem weights, cl_mem offsets,
                                  cl_mem pair_token, int n, cl_mem next_norm, cl_mem xn) const;
  // Experts on several devices: the router's choice comes to the host and each device runs the
  // pairs of its experts; the partial sums come back to `home`.
  void across_devices(DeviceCtx& home, int n);
  // The step's experts on `home` from `shard` (every expert, global order): no host round trip.
  bool on_home(DeviceCtx& home, const LayerStep& s, const Shard& shard, cl_mem next_norm);
  // The host's part of an in-step routing of n tokens: the balancer's copy of the router's choice
  // (when it counts) and the expert hits.
  void book_choices(DeviceCtx& home, int n);
  // Decides what shard s runs with on c (SwiGLU in gate|up, combine in down, the one-launch FFN)
  // and prepares those programs.
  void finish_shard(DeviceCtx& c, Shard& s) const;
  // Streamed experts (EngineOptions::stream_experts): every expert's weights (gate|up or gate
  // and up, down) repacked in pinned host memory of the home device, each with the home device's
  // layer-sized buffer it is written to (DeviceCtx::stream_weights, shared by its layers), and
  // the shard that runs them. Prepared for a layer with experts off its home device, where the
  // options allow it.
  struct Stream {
    struct Image {
      std::unique_ptr<PinnedBytes> bytes;  // body, then head from `body`
      size_t body = 0;
      ops::DeviceWeight w;  // written before each streamed step
    };
    std::vector<Image> images;
    Shard shard;
    int slot = 0;  // which of the home device's two layer buffers (DeviceCtx::stream_weights)
  };
  void prepare_stream(DeviceCtx& home);
  // Enqueues the writes of every expert into the layer's slot on home's copy queue, after
  // everything queued on home so far (the launches that read the slot before), or without a copy
  // queue in order on home's queue; returns the event of the last write.
  ClEvent write_stream(DeviceCtx& home);
  // At this layer's point of a streamed step of n tokens: its launches wait for its weights
  // (written now, or ahead by the streamed layer before), and the next streamed layer's write
  // starts when it uses the other slot, so it runs while this layer computes.
  void stream_in(DeviceCtx& home, int n);
  // The fewest tokens of a streamed step by the plan's cost model (stream_experts_min_tokens 0).
  int stream_break_even(int home) const;
  bool streams(const DeviceCtx& home, int n_tokens) const;

  const model::ModelSpec& spec_;
  const model::LayerSpec& ls_;
  int layer_ = 0;
  MoeRuntime* moe_ = nullptr;
  reference::RoutingConfig routing_;
  // The device's routing: routing_ with Granite's residual multiplier in its weight scale (the
  // combine is linear in the weights); the reference applies the multiplier to the layer's output.
  reference::RoutingConfig device_routing_;
  bool oai() const { return ref_.swiglu_oai; }
  struct DeviceWeights {
    ClMem ffn_norm;
    ops::DeviceWeight router;
    ClMem router_b;             // gpt-oss's router bias (empty when none)
    std::vector<Shard> shards;  // per plan device
    bool all_on_home = false;   // every expert on the layer's device, in global order
    int home = 0;               // the layer's plan device
    bool route_tail = false;    // the output projection may route (prepared at upload)
    bool route_ffn = false;     // ... and run the experts (Fusion::route_ffn; prepared at upload)
  } dev_;
  ops::RouteTail route_tail_;
  ops::RouteTail::Ffn route_ffn_;  // route_tail_.ffn when set
  bool stream_wanted_ = false;  // the options allow streaming to the home device (upload)
  int stream_min_tokens_ = 0;
  bool stream_ahead_ = true;  // EngineOptions::stream_ahead
  bool stream_queue_ = true;  // EngineOptions::stream_queue
  std::unique_ptr<Stream> stream_;
  std::vector<float> ref_ffn_norm_;
  reference::MoeWeights ref_;
};

}  // namespace tessera::engine
