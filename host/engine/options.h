// The OpenCL engine's options, one step's batch and its statistics: the values OpenClModel, the
// layer classes and the engine's clients share.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "host/kv/block_manager.h"
#include "host/kv/kv_format.h"

namespace tessera {
class ProbeCache;
}

namespace tessera::engine {

// KV cache formats per layer, K and V chosen separately (kv_formats_of in planning.h resolves a
// config's kv_cache keys); empty: f16 everywhere.
struct KvLayerFormats {
  std::vector<kv::KvFormat> k, v;  // per layer, or empty
  kv::KvFormat k_at(size_t layer) const { return k.empty() ? kv::KvFormat::kF16 : k.at(layer); }
  kv::KvFormat v_at(size_t layer) const { return v.empty() ? kv::KvFormat::kF16 : v.at(layer); }
};

struct EngineOptions {
  int max_batch_tokens = 256;  // tokens of one forward step (prefill is chunked to this)
  int max_sequences = 8;       // sequences of one step
  int max_logit_rows = 0;      // logit rows of one step; 0: max_sequences (perplexity wants more)
  int max_context = 0;         // tokens per sequence; 0: the model's training context (capped 4096)
  int kv_block_size = 16;
  int kv_blocks = 0;          // 0: enough for max_sequences sequences of max_context tokens
  KvLayerFormats kv_formats;  // the cache's formats per layer (empty: f16)
  bool balancer = false;
  // Steps of at least stream_experts_min_tokens tokens (prefill) in a MoE layer whose experts are
  // not all on its own device: the layer's device takes every expert's weights from pinned host
  // memory into one of two layer-sized buffers it keeps for all such layers (they take them in
  // turn) and runs the experts itself
  // (as llama.cpp does with host-held weights for big batches), instead of the other devices
  // running their experts behind a host round trip. kAuto: where that device is not a CPU (the
  // planner keeps room for the buffer there: Plan::stream_bytes); kOn: any device (tests); kOff:
  // never.
  // stream_experts_min_tokens 0: per layer from the plan's cost model, the tokens at which the
  // write (the layer's expert bytes at the device's probed host-to-device rate) costs less than
  // the other devices' expert FLOPs for those tokens at their probed throughput.
  enum class StreamExperts { kAuto, kOn, kOff } stream_experts = StreamExperts::kAuto;
  int stream_experts_min_tokens = 0;
  // A streamed layer's write runs on the device's copy queue while the streamed layer before it
  // computes (two layer buffers in turn); off: each write waits for the launches before it
  // ("stream_ahead" in $TESSERA_NO_FUSE turns it off, for A/B runs).
  bool stream_ahead = true;
  // Those writes on a second in-order queue of the device; off (or where the device cannot create
  // one): in order on its own queue, so each write waits for the launches before it and delays
  // those after it, and none runs ahead ("stream_queue" in $TESSERA_NO_FUSE, for A/B runs).
  bool stream_queue = true;
  // Devices that hold experts and no layers, share host memory and offer fine-grained buffer SVM
  // take their MoE pairs and activations and give their partial sums in place, in host memory
  // (DeviceCtxSizes::shared_stage): one launch per layer and step, no write or read command; the
  // devices that hold layers read choices and activations into, and write partial sums from,
  // pinned host memory (DeviceCtx::pin_stage). "zero_copy" in $TESSERA_NO_FUSE turns both off,
  // for A/B runs.
  bool zero_copy = true;
  bool profile = false;  // time every launch with profiling events (EngineStats::device_op_seconds)
  // Fused launches (each has a portability-matrix case); switching one off runs the separate
  // kernels instead, for A/B measurements. The CLI switches them off by name from
  // $TESSERA_NO_FUSE (apply_no_fuse: qkv, norm_route, proj_route, combine_norm, swiglu, glu,
  // attn_reduce, decode_finish, down_combine, expert_ffn, route_ffn, next_qkv, argmax, flush,
  // pipeline, stream_ahead, stream_queue, zero_copy).
  struct Fusion {
    bool qkv = true;           // q/k/v one matrix; norms + RoPE + KV store in one launch
    bool norm_route = true;    // FFN norm + F32 router + top-k
    // Steps of up to 64 tokens: the FFN norm, router and top-k (with norm_route's conditions) in
    // the attention's output projection launch (MatmulOp::run_route_tail): no routing launch.
    bool proj_route = true;
    bool combine_norm = true;  // MoE combine + next layer's attention norm
    bool swiglu = true;        // SwiGLU folded into the down projection (GPUs only)
    // SwiGLU in the gate|up expert launch (MatmulOp::run_experts_glu), where it is not folded
    // into down (CPUs): one launch per MoE layer fewer than a separate activation.
    bool glu = true;
    // Split-K decode attention combined by its last work-group (AttentionTuning::fused_reduce):
    // no reduce launch.
    bool attn_reduce = true;
    // Decode steps: q/k norms, RoPE and the KV store inside the decode attention launch
    // (AttentionOp::decode with a DecodeFinish): no qkv_finish launch.
    bool decode_finish = true;
    // The MoE combine (+ the next layer's norm, with combine_norm) in the down projection's
    // launch for decode-sized steps (MatmulOp::run_experts_combine): its last work group per
    // token combines the token's rows.
    bool down_combine = true;
    // CPUs, decode-sized steps: a MoE layer's gate|up, SwiGLU, down and combine in one launch
    // (MatmulOp::run_expert_ffn) instead of the glu and down_combine launches.
    bool expert_ffn = true;
    // CPUs, one-token steps: the output projection with the routing tail (proj_route) and the
    // layer's experts (expert_ffn) in one launch (MatmulOp::run_route_tail with its Ffn): one
    // launch per MoE layer fewer.
    bool route_ffn = true;
    // With route_ffn (and combine_norm): the next attention layer's q|k|v projection in that
    // launch too, on the combine's normed row (RouteTail::Ffn::next): one launch per layer fewer.
    bool next_qkv = true;
    // With next_qkv, one-token decode steps: the next attention layer's decode attention in that
    // launch too, after its projection (RouteTail::Ffn::attention): one launch per layer fewer.
    bool next_attention = true;
    // With combine_norm, the output norm in the last layer's combine when the step's logit rows
    // are its tokens in order (decode): the output norm's launch saved.
    bool head = true;
    // Greedy sampling on the device: a step whose every wanted row is a greedy sample with no
    // logits returned runs argmax_rows on the logits and reads back one id per row instead of
    // the rows (Engine; OpenClModel::forward_argmax).
    bool argmax = true;
    // GPUs, opt-in ($TESSERA_FUSE=route_ffn_gpu): route_ffn (and next_qkv) in the GPUs' shape
    // (matmul_route_ffn with several lanes per row). Off by default: on an H100 its decode was
    // 0.85-0.91x of the separate launches' for Q4_0, 0.88-0.94x for Q8_0 (one round 1.04x;
    // bench/END_TO_END.md).
    bool route_ffn_gpu = false;
  } fuse;
  // clFlush after each layer's mixer so the device starts while the host enqueues the rest
  // ("flush" in $TESSERA_NO_FUSE turns it off).
  bool flush_per_layer = true;
  // Greedy decode steps chained on the device (Engine; OpenClModel::submit_argmax): the next
  // step is enqueued before the previous step's ids are read, its tokens copied from those ids
  // on the device, so the host's enqueue of one step overlaps the device's run of the other
  // ("pipeline" in $TESSERA_NO_FUSE turns it off).
  bool pipeline = true;
  // Record each batch shape's step once as an ops::StepProgram and replay it for later steps of
  // that shape (same tokens, sequences, logit rows); off: every step enqueues its ops afresh.
  // Steps with profiling always enqueue afresh; balancer moves drop the recorded programs.
  bool replay = true;
  // Mamba2's scan and DeltaNet's delta rule on steps with a prefill run (ops::PrefillForm): kAuto
  // takes the chunked kernels where they measured faster (DeltaNet: every device; Mamba2: GPUs and
  // CPUs of 8+ compute units); tests force either form. Decode-only steps always take the
  // recurrent kernels.
  enum class ScanPrefill { kAuto, kRecurrent, kChunked } scan_prefill = ScanPrefill::kAuto;
  // Where each device's decode launch price is kept (the probe cache; null: the engine measures
  // none). With it, when a plan device's price for this model (launch_price_key) is not cached,
  // the engine profiles three one-token decode steps (replays, after three unprofiled ones it
  // times; chaining pauses for them), prices each device's launches from them
  // (sched::calibrated_launch_us; a plan of one device by the unprofiled steps' wall time where it
  // is longer than the kernels' device time), stores the prices and predicts its plan again.
  std::shared_ptr<const ProbeCache> launch_prices;
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

// Host time of the multi-device MoE path's host syncs (MoeFfn::across_devices): the home device's
// router choice and activations read, the devices' expert work (its slowest lane), and the
// partial sums sent back.
struct SyncTiming {
  uint64_t syncs = 0;
  double read = 0;   // the home device's read: waiting for its queue to reach the layer, the copy
  double lanes = 0;  // from the read until every device's experts are done and read back
  double back = 0;   // enqueueing the partial sums' writes and adds on the home device
  // Per device id (the devices that ran pairs): enqueueing its pairs, activations and launches,
  // then waiting for its result (a blocking read, or the queue's finish with a shared stage).
  std::map<std::string, double> lane_enqueue, lane_wait;
};

// Host time of steps of one kind ("decode": every sequence one token; "prefill": the others).
struct StepTiming {
  uint64_t steps = 0;
  double wall = 0;     // the whole forward step
  double enqueue = 0;  // writing the batch and enqueueing the step (a program's run(), its host
                       // syncs included), until the host waits for the results
  double wait = 0;     // waiting for the logits (or for the queues to finish)
  SyncTiming sync;     // within enqueue: the host syncs'
};

// Replayed steps run with profiling events (OpenClModel::set_profile_replays): their commands and
// the device time of each kernel.
struct ReplayProfile {
  struct KernelTime {
    uint64_t launches = 0;
    double seconds = 0;  // device time, summed over its launches
  };
  uint64_t steps = 0, launches = 0, copies = 0, flushes = 0, host_calls = 0, host_syncs = 0;
  double wall = 0;  // host time of these (profiled) steps
  // By (device id, kernel name; "copy" for device-side copies).
  std::map<std::pair<std::string, std::string>, KernelTime> kernels;
};

// Time and counters per op family and device, for the run summary.
struct EngineStats {
  std::map<std::string, double> op_seconds;         // wall time of prefill and decode steps
  std::map<std::string, double> device_op_seconds;  // device time per op family (profile option)
  std::map<std::string, StepTiming> step_timing;    // by step kind: "decode", "prefill"
  std::map<std::string, ReplayProfile> replay_profile;  // by step kind, profiled replays only
  std::vector<double> device_seconds;                   // per plan device: busy time of expert work
  std::vector<uint64_t> expert_hits;                    // per plan device: expert selections served
  uint64_t balancer_moves = 0;
  uint64_t steps = 0;
  uint64_t argmax_steps = 0;  // steps whose rows were sampled on the device (forward_argmax)
  // Steps submitted while the previous one ran, their tokens copied from its ids on the device
  // (OpenClModel::submit_argmax with tokens_from_previous).
  uint64_t chained_steps = 0;
  // One-token decode steps profiled to price the devices' launches (EngineOptions::launch_prices).
  uint64_t calibration_steps = 0;
  // MoE layers run with their experts streamed to the layer's device (stream_experts), and the
  // weight bytes written for them; streamed_ahead: of those layers, the ones whose write ran
  // while the layer before computed (written ahead into the other of the device's two buffers).
  uint64_t streamed_layers = 0, streamed_bytes = 0, streamed_ahead = 0;
  // Devices' MoE jobs (one per device and multi-device layer step) that took their pairs and
  // activations and gave their partial sum in shared host memory (EngineOptions::zero_copy).
  uint64_t zero_copy_jobs = 0;
};

// Switches off the fusions named in `names` (comma separated: qkv, norm_route, proj_route,
// combine_norm, swiglu, glu, attn_reduce, decode_finish, down_combine, expert_ffn, route_ffn,
// next_qkv, argmax, flush, pipeline; as $TESSERA_NO_FUSE gives them). Throws std::invalid_argument
// naming an unknown name and the known ones.
void apply_no_fuse(std::string_view names, EngineOptions& options);
// Switches on the opt-in fusions named in a comma-separated list (route_ffn_gpu; as $TESSERA_FUSE
// gives them). Throws std::invalid_argument naming an unknown one.
void apply_fuse(std::string_view names, EngineOptions& options);
// The switches of `options` that differ from their defaults, "no_fuse=a,b;fuse=c" (names as
// apply_no_fuse and apply_fuse take them, in their order); empty when all are at their defaults.
// Part of launch_price_key: the switches change which launches a step makes.
std::string switches_key(const EngineOptions& options);

}  // namespace tessera::engine
