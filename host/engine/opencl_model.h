// The OpenCL forward pass: a model's layers as device kernels on the devices a Plan assigns, over a
// paged KV cache. One forward step takes a batch of sequences at different positions (prefill
// chunks and decode tokens mixed), which continuous batching relies on.
#pragma once

#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "devices/device.h"
#include "host/engine/device_ctx.h"
#include "host/engine/layers/layer.h"
#include "host/engine/layers/moe_ffn.h"
#include "host/engine/options.h"
#include "host/kv/paged_kv_cache.h"
#include "host/kv/sequence_memory.h"
#include "host/model/model_spec.h"
#include "host/ops/device/step_program.h"
#include "scheduler/balancer.h"
#include "scheduler/executor.h"
#include "scheduler/planner.h"

namespace tessera::engine {

// Thread-safety: one engine thread drives it (it owns every device queue it uses).
class OpenClModel {
 public:
  // Uploads the weights of `spec` (whose GgufFile must outlive this) to the devices of `plan`
  // (ids resolved in `registry`) and allocates the KV cache on each layer's device.
  OpenClModel(const model::ModelSpec& spec, const DeviceRegistry& registry, sched::Plan plan,
              const sched::ModelFootprint& footprint, EngineOptions options);
  ~OpenClModel();

  const model::ModelSpec& spec() const { return spec_; }
  // Every sequence's memory (create / fork / free / reserve go through it).
  kv::SequenceMemory& memory() { return *memory_; }
  const kv::SequenceMemory& memory() const { return *memory_; }
  // Its KV cache, for callers that manage attention-only models' sequences directly.
  kv::PagedKvCache& kv_cache() { return *memory_->kv(); }
  const kv::PagedKvCache& kv_cache() const { return *memory_->kv(); }
  const sched::Plan& plan() const { return plan_; }
  // The cost model's view of the model: bytes from the spec, launch counts of one decode token
  // counted at construction from the step's own code recorded into a count-only step program
  // (embedding, each layer's dense part and experts, output). The balancer and plan()'s predicted
  // times use these.
  const sched::ModelFootprint& footprint() const { return footprint_; }
  const EngineStats& stats() const { return stats_; }
  const EngineOptions& options() const { return options_; }
  uint64_t uploaded_bytes() const { return uploader_.uploaded(); }

  // Runs one step: writes the tokens' K/V (their positions must be reserved in the KV cache) and
  // returns logits [logit_rows.size()][n_vocab]. Throws on inconsistent batches.
  std::vector<float> forward(const StepBatch& batch);
  // The same step, then each wanted row's argmax on the device (ops::ElementwiseOps::argmax_rows:
  // ties to the lowest id, NaNs skipped, as Sampler::argmax): only the ids are read back, one per
  // logit row (greedy sampling without a [rows][n_vocab] download).
  std::vector<int32_t> forward_argmax(const StepBatch& batch);

  // Chained greedy steps: forward_argmax in two halves, so the host enqueues the next step while
  // the device runs this one. submit_argmax enqueues a step, its argmax and a non-blocking read of
  // the ids; collect_argmax waits for the oldest submitted step and returns its ids (one per logit
  // row). With `tokens_from_previous` the step's tokens are not taken from batch.tokens but copied
  // on the device from the ids of the step submitted before it (still in flight or collected last):
  // row i's id becomes token i, so the batch must be one token per sequence, each a logit row, in
  // the order of that step's rows. At most two steps are in flight; KV positions must be reserved
  // as for forward. Only while can_chain().
  void submit_argmax(const StepBatch& batch, bool tokens_from_previous);
  std::vector<int32_t> collect_argmax();
  size_t steps_in_flight() const { return in_flight_.size(); }
  // Whether steps may be chained: EngineOptions::pipeline and replay on, argmax sampling on, no
  // profiling, and every layer and expert on the output device (a step with a host round trip
  // inside cannot run ahead of the host). With the expert balancer on, its counts keep coming from
  // the chained steps; it moves experts only once no step is in flight.
  bool can_chain() const;
  const sched::ExpertBalancer& balancer() const { return *balancer_; }

  // Recorded step programs kept for replay (one per batch shape seen recently), and how many steps
  // were recorded and replayed.
  size_t cached_programs() const { return programs_.size(); }
  // The program of the latest replayable step (null before one); valid until the next forward.
  const ops::StepProgram* latest_program() const;
  uint64_t recorded_steps() const { return recorded_steps_; }
  uint64_t replayed_steps() const { return replayed_steps_; }
  // While on, replayed steps run with a profiling event per launch and copy, and add their
  // commands and each kernel's device time to stats().replay_profile (opt-in: events cost launch
  // time on some drivers, so the hot path runs without them). Steps that enqueue afresh are not
  // profiled this way (EngineOptions::profile times those by op family).
  void set_profile_replays(bool on) { profile_replays_ = on; }

 private:
  struct CachedProgram;
  void check(const StepBatch& b) const;
  // forward's body: the logits, or with `ids` the rows' argmax only (logits left empty).
  std::vector<float> run(const StepBatch& b, std::vector<int32_t>* ids);
  // run's first half: the batch on the devices and the step enqueued (replayed where a program of
  // its shape exists, recorded otherwise). The tokens come from `tokens`, a device buffer on the
  // output device whose first n ids are the tokens, or (null) from `host_tokens` by a write not
  // waited for (they must stay until the step has run). Returns whether it is a decode step;
  // `profile` gets the events of a profiled replay.
  bool enqueue_batch(const StepBatch& b, cl_mem tokens, const int32_t* host_tokens,
                     std::optional<ops::StepProgram::Profile>& profile);
  // Adds one step's host times (and a profiled replay's commands and kernel times) to stats_.
  void record_timing(bool decode, double enqueue, double wait,
                     std::optional<ops::StepProgram::Profile>& profile);
  // Enqueues (or, while a step program records, appends) the step's work from the embedding to
  // the logits in home.logits; the batch is already on the devices.
  void enqueue_step(const StepBatch& b, int n, bool decode);
  // The residual stream's final norm and the output projection of the wanted rows into
  // home.logits.
  // The output norm (unless `normed`: xn's rows are the logit rows' already) and projection.
  void output_head(DeviceCtx& home, const StepBatch& b, bool normed = false);
  // After a step's queues finished: profiling, the balancer's counts (the first `choices` pending
  // router choices: those of the collected step; the rest belong to a step still in flight) and,
  // with no step in flight, its moves.
  void end_step(size_t choices = SIZE_MAX);
  // Records a one-token decode step count-only and sets footprint_'s launch counts from it.
  void count_launches();
  // EngineOptions::launch_prices: whether a one-token decode replay about to run is profiled for
  // the calibration (counting the unprofiled ones it skips first), and what a profiled one's
  // kernels took per plan device; the last one prices the launches (finish_calibration).
  bool calibrates_next(bool decode, int n);
  // EngineOptions::launch_prices: the launch counts of count_launches, per device, for `tessera
  // plan` (launch_counts_from_cache).
  void store_launch_counts() const;
  // launch_price_key of plan device d for this model, computed once (it hashes every kernel
  // source).
  const std::string& price_key(size_t d) const;
  mutable std::vector<std::string> price_keys_;
  void add_calibration(const std::vector<ops::StepProgram::Profile::Timed>& times);
  void finish_calibration();
  DeviceCtx& ctx(int plan_device) { return *ctxs_[size_t(plan_device)]; }

  model::ModelSpec spec_;
  sched::Plan plan_;
  sched::ModelFootprint footprint_;
  EngineOptions options_;
  std::vector<std::unique_ptr<DeviceCtx>> ctxs_;
  std::unique_ptr<kv::SequenceMemory> memory_;
  std::unique_ptr<sched::Executor> executor_;
  std::unique_ptr<sched::ExpertBalancer> balancer_;
  MoeRuntime moe_;
  std::vector<Layer> layers_;  // built from spec_, uploaded to their plan devices
  EngineStats stats_;
  WeightUploader uploader_;
  ClMem embd_table_, output_norm_;  // on the attention device
  ops::DeviceWeight output_;
  std::vector<std::unique_ptr<CachedProgram>> programs_;  // most recently used last
  // While count_launches records: the program's launch count after the embedding and after each
  // layer (enqueue_step appends).
  std::vector<size_t>* step_marks_ = nullptr;
  uint64_t recorded_steps_ = 0, replayed_steps_ = 0;
  // Chained steps submitted and not yet collected, oldest first.
  struct InFlight {
    std::vector<int32_t> ids;     // the read's destination
    std::vector<int32_t> tokens;  // the write's source (tokens from the host)
    ClEvent read;                 // completes with the read (after the step, in queue order)
    bool decode = false;
    double enqueue_seconds = 0;
    size_t choices = 0;  // MoeRuntime::pending_choices up to this step's (the balancer's reads)
  };
  std::deque<InFlight> in_flight_;
  uint64_t enqueued_steps_ = 0;  // steps enqueued (MoeRuntime::count_choices samples them)
  int last_submitted_rows_ = 0;  // rows of the latest submitted step (tokens_from_previous)
  bool profile_replays_ = false;
  bool calibration_step_ = false;   // the step being run is profiled for the calibration
  bool calibration_timed_ = false;  // the step being run is one the calibration skips and times
  // The shortest wall time of the steps skipped (a one-device plan prices its launches by it
  // where it is above the profiled kernels' time).
  double calibration_wall_ = std::numeric_limits<double>::infinity();
  // Launch-price calibration (EngineOptions::launch_prices): one-token decode replays still to
  // skip, then to profile (both 0: done, nothing to measure, or given up after 64 decode replays
  // of several sequences), and per plan device the kernels'
  // device time and launches summed over the profiled ones.
  int calibration_skip_ = 0, calibration_steps_ = 0, calibration_done_ = 0;
  int calibration_missed_ = 0;  // decode replays of several sequences seen meanwhile
  std::vector<double> calibration_busy_;
  std::vector<uint64_t> calibration_launches_;
};

// The planner's view of a model: bytes per layer and per expert.
sched::ModelFootprint footprint_of(const model::ModelSpec& spec, int context_tokens,
                                   const KvLayerFormats& kv_formats = {});

}  // namespace tessera::engine
