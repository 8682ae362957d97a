// The request engine: a queue of generation and scoring requests over one OpenClModel, stepped by
// one engine thread. Each step admits waiting requests (KV reserved with try_reserve), builds one
// mixed batch (decode tokens first, then prefill chunks), runs it, samples and streams tokens out;
// greedy decode steps run chained, the next submitted before the last is read.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "host/common/error.h"
#include "host/engine/opencl_model.h"
#include "host/engine/sampler.h"

namespace tessera::engine {

using RequestId = uint64_t;

// Why a request ended.
enum class FinishReason {
  kNone,     // still running (an output with a token or prompt logits)
  kEog,      // sampled an end-of-generation token (Request::is_eog), which is the last output token
  kLength,   // generated max_tokens tokens (or max_tokens == 0: the prompt is done)
  kAborted,  // abort_request
  kFailed,   // its own error (RequestOutput::error); the other requests go on
};
const char* finish_reason_name(FinishReason reason);

// A request failed on its own (bad prompt, KV cache that can never hold it, KV exhausted while
// decoding, a forward step that threw). What clients that want an exception throw.
struct RequestError : TesseraError {
  using TesseraError::TesseraError;
};

// What one step hands a request's callback. Spans point into the engine's step buffers: valid
// only during the call.
struct RequestOutput {
  RequestId id = 0;
  int32_t token = -1;  // the token sampled this step; -1 when none
  // Request::return_logits: the logits `token` was sampled from ([n_vocab]).
  std::span<const float> logits;
  // Request::return_prompt_logits: logits of prompt positions [prompt_first, prompt_first + n)
  // ([n][n_vocab]; the row of position p predicts prompt token p + 1).
  std::span<const float> prompt_logits;
  int32_t prompt_first = 0;
  FinishReason finish = FinishReason::kNone;
  std::string error;  // finish == kFailed: what went wrong, naming the request
  bool finished() const { return finish != FinishReason::kNone; }
};

// Called on the engine thread, inside step(). An exception thrown here fails that request (freed,
// no further calls) and is rethrown from step() once the step's bookkeeping is done.
using OutputCallback = std::function<void(const RequestOutput&)>;

struct Request {
  std::vector<int32_t> prompt;  // token ids (BOS included when the model wants one)
  int max_tokens = 16;          // tokens to generate; 0: prefill only (scoring)
  SamplerConfig sampling;
  std::function<bool(int32_t)> is_eog;  // end-of-generation tokens; null: none
  bool return_logits = false;           // each sampled token's logits in the output
  bool return_prompt_logits = false;    // every prompt position's logits (perplexity)
  OutputCallback on_output;             // may be null (the request runs, nothing is told)
};

// Engine-level scheduling knobs; the step limits (tokens, sequences, logit rows) are the model's
// EngineOptions, so one place sizes both the buffers and the batches.
struct EngineConfig {
  // Prompt tokens of one request per step; 0: max_batch_tokens. Smaller chunks keep the decode
  // steps of other requests short while a long prompt prefills.
  int prefill_chunk = 0;
};

// Counters since construction.
struct EngineCounters {
  uint64_t steps = 0;
  uint64_t prompt_tokens = 0;  // prompt tokens run
  uint64_t decode_tokens = 0;  // sampled tokens fed back
  double prefill_seconds = 0;  // wall time of steps that carried prompt tokens
  double decode_seconds = 0;   // wall time of steps of decode tokens only
  int kv_blocks_peak = 0;      // most KV blocks in use at once in any layer group
  // Per KV layer group (kv::PagedKvCache::group_of: layers of one attention window): most blocks
  // in use at once. A window group's stays bounded by its window as sequences grow.
  std::vector<int> kv_group_blocks_peak;
  uint64_t finished = 0, failed = 0, aborted = 0;
};

// Thread-safety: add_request and abort_request may be called from any thread; they enqueue
// instructions that the next step() applies. Every other method, step() included, belongs to the
// one engine thread.
class Engine {
 public:
  // Takes the model (and with it the KV cache): nothing else may use its sequences.
  explicit Engine(std::unique_ptr<OpenClModel> model, EngineConfig config = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id at once (ids increase from 1). Checks happen on the engine
  // thread: a bad request is failed through its callback at the next step.
  RequestId add_request(Request request);
  // Ends a waiting or running request at the next step (its callback gets kAborted); an unknown
  // or finished id is ignored.
  void abort_request(RequestId id);

  // One step: applies queued instructions, admits, runs one batch, emits. Returns the tokens run
  // (0 when there was nothing to run). Greedy decode steps on a model that can chain them
  // (OpenClModel::can_chain) are submitted and read one step() later: while every running request
  // decodes on, each step() submits the next step before it reads the one in flight, so the
  // host's work overlaps the device's; a request's tokens come out as the step that made them is
  // read. Anything else (a new or aborted request, a request at its last token or finished) ends
  // the chain: that step() only reads the one in flight.
  int step();
  // Steps until no request is waiting or running.
  void run_until_idle();
  // No queued instruction, no waiting or running request.
  bool idle() const;

  int n_waiting() const { return int(waiting_.size()); }
  int n_running() const { return int(running_.size()); }
  const EngineCounters& counters() const { return counters_; }
  OpenClModel& model() { return *model_; }
  const OpenClModel& model() const { return *model_; }

 private:
  struct Live;
  struct Instruction {
    RequestId id = 0;
    bool abort = false;
    Request request;  // !abort
  };
  struct StepEntry;
  struct Chained;

  // step() while a chained step is in flight: submits the next one when every running request
  // continues in it (try_chain), then reads and emits the one in flight.
  int step_chained();
  std::unique_ptr<Chained> try_chain(const Chained& prev);
  // Samples, streams and finishes the requests of a step's entries from its logits or ids.
  void emit(std::vector<StepEntry>& entries, const std::vector<float>& logits,
            const std::vector<int32_t>& ids, bool argmax);
  // Frees r's KV sequence now, or once the step in flight that writes it has been read.
  void release(Live& r);

  // Takes the queued requests and aborts; `drop`: then drops finished requests from the lists
  // (not while a caller still walks a step's entries).
  void apply_instructions(bool drop = true);
  void admit();
  // Ends `r` with `reason`: frees its KV sequence, tells its callback, drops it.
  void finish(Live& r, FinishReason reason, const std::string& error = {});
  void deliver(Live& r, const RequestOutput& out);
  void drop_finished();

  // The KV cache, through these only (create / try_reserve / free and the capacity queries).
  kv::SeqId kv_create();
  bool kv_try_reserve(kv::SeqId seq, int32_t n_tokens);
  bool kv_admissible(kv::SeqId seq, int32_t n_tokens, int32_t reserve_blocks) const;
  void kv_free(kv::SeqId seq);
  // The counters' peaks of KV blocks in use, after a step's reservations.
  void note_kv_peaks();
  int64_t kv_capacity_tokens() const;
  int kv_blocks_used(int32_t group) const;

  std::unique_ptr<OpenClModel> model_;
  EngineConfig config_;
  EngineCounters counters_;

  mutable std::mutex mutex_;  // guards instructions_ and next_id_
  std::vector<Instruction> instructions_;
  RequestId next_id_ = 1;

  std::deque<std::unique_ptr<Live>> waiting_;   // admission order
  std::vector<std::unique_ptr<Live>> running_;  // admission order
  std::exception_ptr callback_error_;
  // Greedy decode steps chained on the device (EngineOptions::pipeline): the step submitted and
  // not read yet, and sequences of requests that finished while a step in flight still wrote them.
  std::unique_ptr<Chained> chained_;
  std::vector<kv::SeqId> deferred_free_;
};

}  // namespace tessera::engine
