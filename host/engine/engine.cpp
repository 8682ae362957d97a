// The request engine's step: instructions, admission by KV reservation, one mixed batch, sampling,
// streaming, finishing. Requests fail alone; the KV cache is touched only by the kv_* functions.
#include "host/engine/engine.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <stdexcept>

namespace tessera::engine {

namespace {
using Clock = std::chrono::steady_clock;
std::string name_of(RequestId id) {
  return "request " + std::to_string(id);
}
}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "running";
    case FinishReason::kEog:
      return "eog";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAborted:
      return "aborted";
    case FinishReason::kFailed:
      return "failed";
  }
  return "?";
}

// A request the engine holds: waiting (no sequence yet) or running (prompt reserved).
struct Engine::Live {
  RequestId id = 0;
  Request req;
  std::optional<Sampler> sampler;
  kv::SeqId seq = -1;
  bool has_seq = false;
  int32_t prefilled = 0;  // prompt tokens run so far
  int32_t next = -1;      // sampled token to feed at the next step (-1: none)
  int generated = 0;
  bool done = false;
  bool in_flight = false;  // in a chained step not read yet: its sequence stays until then
  int32_t prompt_len() const { return int32_t(req.prompt.size()); }
};

// One request's tokens in the step's batch.
struct Engine::StepEntry {
  Live* r = nullptr;
  bool decode = false;
  int32_t first_pos = 0;  // position of its first token
  int32_t n = 0;          // tokens
  int32_t first_row = 0;  // its first logit row in the step's output
  int32_t n_rows = 0;
};

// A greedy decode step submitted to the model (OpenClModel::submit_argmax) and not read yet.
struct Engine::Chained {
  std::vector<StepEntry> entries;  // decode entries, row i = entry i
};

Engine::Engine(std::unique_ptr<OpenClModel> model, EngineConfig config)
    : model_(std::move(model)), config_(config) {
  if (!model_) throw std::invalid_argument("engine: no model");
  if (config_.prefill_chunk < 0)
    throw std::invalid_argument("engine: prefill_chunk " + std::to_string(config_.prefill_chunk) +
                                " must be >= 0");
}

Engine::~Engine() {
  try {
    while (model_->steps_in_flight() > 0) model_->collect_argmax();
  } catch (const std::exception&) {
    // The device failed under the step in flight; the sequences are freed all the same.
  }
  for (auto& r : running_)
    if (r->has_seq) kv_free(r->seq);
  for (kv::SeqId seq : deferred_free_) kv_free(seq);
}

RequestId Engine::add_request(Request request) {
  std::lock_guard lock(mutex_);
  Instruction ins;
  ins.id = next_id_++;
  ins.request = std::move(request);
  instructions_.push_back(std::move(ins));
  return instructions_.back().id;
}

void Engine::abort_request(RequestId id) {
  std::lock_guard lock(mutex_);
  Instruction ins;
  ins.id = id;
  ins.abort = true;
  instructions_.push_back(std::move(ins));
}

bool Engine::idle() const {
  std::lock_guard lock(mutex_);
  return instructions_.empty() && waiting_.empty() && running_.empty();
}

// --- the sequence memory (KV cache, recurrent state): every use of it is here -----------------

kv::SeqId Engine::kv_create() {
  // At most max_sequences run at once, and the recurrent pool has that many slots.
  return model_->memory().create();
}

bool Engine::kv_try_reserve(kv::SeqId seq, int32_t n_tokens) {
  return model_->kv_cache().try_reserve(seq, n_tokens).has_value();
}

bool Engine::kv_admissible(kv::SeqId seq, int32_t n_tokens, int32_t reserve_blocks) const {
  const auto& cache = model_->kv_cache();
  for (int32_t g = 0; g < cache.n_groups(); ++g) {
    const auto& blocks = cache.blocks(g);
    if (blocks.blocks_needed(seq, n_tokens) + reserve_blocks > blocks.blocks_free()) return false;
  }
  return true;
}

void Engine::kv_free(kv::SeqId seq) {
  model_->memory().free(seq);
}

void Engine::note_kv_peaks() {
  const int32_t n_groups = model_->kv_cache().n_groups();
  counters_.kv_group_blocks_peak.resize(size_t(n_groups), 0);
  for (int32_t g = 0; g < n_groups; ++g) {
    int& peak = counters_.kv_group_blocks_peak[size_t(g)];
    peak = std::max(peak, kv_blocks_used(g));
    counters_.kv_blocks_peak = std::max(counters_.kv_blocks_peak, peak);
  }
}

void Engine::release(Live& r) {
  if (!r.has_seq) return;
  if (r.in_flight)
    deferred_free_.push_back(r.seq);
  else
    kv_free(r.seq);
  r.has_seq = false;
}

int64_t Engine::kv_capacity_tokens() const {
  const auto& blocks = model_->kv_cache().blocks();
  return int64_t(blocks.n_blocks()) * blocks.block_size();
}

int Engine::kv_blocks_used(int32_t group) const {
  return model_->kv_cache().blocks(group).blocks_used();
}

// --- requests in and out ------------------------------------------------------------------------

void Engine::deliver(Live& r, const RequestOutput& out) {
  if (!r.req.on_output) return;
  try {
    r.req.on_output(out);
  } catch (...) {
    if (!callback_error_) callback_error_ = std::current_exception();
    if (!r.done) {
      release(r);
      r.done = true;
      ++counters_.failed;
    }
  }
}

void Engine::finish(Live& r, FinishReason reason, const std::string& error) {
  if (r.done) return;
  release(r);
  r.done = true;
  if (reason == FinishReason::kFailed)
    ++counters_.failed;
  else if (reason == FinishReason::kAborted)
    ++counters_.aborted;
  else
    ++counters_.finished;
  RequestOutput out;
  out.id = r.id;
  out.finish = reason;
  out.error = error;
  deliver(r, out);
}

void Engine::drop_finished() {
  // A finished request in a step in flight stays until that step is read (its row is skipped).
  auto done = [](const std::unique_ptr<Live>& r) { return r->done && !r->in_flight; };
  running_.erase(std::remove_if(running_.begin(), running_.end(), done), running_.end());
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(), done), waiting_.end());
}

void Engine::apply_instructions(bool drop) {
  std::vector<Instruction> batch;
  {
    std::lock_guard lock(mutex_);
    batch.swap(instructions_);
  }
  const auto& o = model_->options();
  const uint32_t n_vocab = model_->spec().hp.n_vocab;
  for (auto& ins : batch) {
    if (ins.abort) {
      for (auto& r : waiting_)
        if (r->id == ins.id) finish(*r, FinishReason::kAborted);
      for (auto& r : running_)
        if (r->id == ins.id) finish(*r, FinishReason::kAborted);
      continue;
    }
    auto r = std::make_unique<Live>();
    r->id = ins.id;
    r->req = std::move(ins.request);
    const std::string who = name_of(r->id);
    std::string error;
    const auto& prompt = r->req.prompt;
    if (prompt.empty()) error = who + ": empty prompt";
    for (size_t i = 0; error.empty() && i < prompt.size(); ++i)
      if (prompt[i] < 0 || uint32_t(prompt[i]) >= n_vocab)
        error = who + ": prompt token " + std::to_string(prompt[i]) + " (position " +
                std::to_string(i) + ") is outside the vocabulary of " + std::to_string(n_vocab);
    if (error.empty() && r->req.max_tokens < 0)
      error = who + ": max_tokens " + std::to_string(r->req.max_tokens) + " must be >= 0";
    if (error.empty()) {
      // Positions the sequence will hold: the prompt and every sampled token but the last.
      const int64_t need = int64_t(prompt.size()) + std::max(0, r->req.max_tokens - 1);
      if (need > o.max_context)
        error = who + ": prompt (" + std::to_string(prompt.size()) + " tokens) + max_tokens " +
                std::to_string(r->req.max_tokens) + " needs " + std::to_string(need) +
                " positions; the engine's context is " + std::to_string(o.max_context) +
                " tokens per sequence";
      else if (need > kv_capacity_tokens())
        error = who + ": prompt (" + std::to_string(prompt.size()) + " tokens) + max_tokens " +
                std::to_string(r->req.max_tokens) + " needs " + std::to_string(need) +
                " positions; the KV cache holds " + std::to_string(kv_capacity_tokens()) +
                " tokens in all, so it can never fit";
    }
    if (error.empty()) {
      try {
        r->sampler.emplace(r->req.sampling);
      } catch (const std::exception& e) {
        error = who + ": " + e.what();
      }
    }
    if (!error.empty()) {
      finish(*r, FinishReason::kFailed, error);
      continue;
    }
    waiting_.push_back(std::move(r));
  }
  if (drop) drop_finished();
}

// First come, first served: the head waits until its prompt's KV blocks are free, keeping one free
// block per running request so their decodes can grow.
void Engine::admit() {
  const int max_running = model_->options().max_sequences;
  while (!waiting_.empty() && int(running_.size()) < max_running) {
    Live& r = *waiting_.front();
    const kv::SeqId seq = kv_create();
    if (!kv_admissible(seq, r.prompt_len(), int32_t(running_.size())) ||
        !kv_try_reserve(seq, r.prompt_len())) {
      kv_free(seq);
      break;
    }
    r.seq = seq;
    r.has_seq = true;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

// --- the step -----------------------------------------------------------------------------------

int Engine::step() {
  if (chained_) return step_chained();
  apply_instructions();
  admit();

  const auto& o = model_->options();
  int tokens_left = o.max_batch_tokens;
  int rows_left = o.max_logit_rows;
  const int chunk_cap = config_.prefill_chunk > 0 ? config_.prefill_chunk : o.max_batch_tokens;
  StepBatch b;
  std::vector<StepEntry> entries;
  std::vector<Live*> blocked;  // decodes without a free KV block this step
  auto add = [&](Live& r, bool decode, int32_t first_pos, int32_t n, int32_t n_rows,
                 const int32_t* tokens) {
    StepEntry e{&r, decode, first_pos, n, int32_t(b.logit_rows.size()), n_rows};
    const int32_t seq_row = int32_t(b.seqs.size());
    b.seqs.push_back(r.seq);
    const int32_t base = int32_t(b.tokens.size());
    for (int32_t i = 0; i < n; ++i) {
      b.tokens.push_back(tokens[i]);
      b.token_seq.push_back(seq_row);
      b.token_pos.push_back(first_pos + i);
    }
    for (int32_t i = n - n_rows; i < n; ++i) b.logit_rows.push_back(base + i);
    tokens_left -= n;
    rows_left -= n_rows;
    entries.push_back(e);
  };

  // Decode tokens first: one per request that has a sampled token to feed.
  for (auto& rp : running_) {
    Live& r = *rp;
    if (r.next < 0) continue;
    if (tokens_left == 0 || rows_left == 0) break;
    const int32_t pos = r.prompt_len() + r.generated - 1;
    if (!kv_try_reserve(r.seq, 1)) {
      blocked.push_back(&r);
      continue;
    }
    add(r, true, pos, 1, 1, &r.next);
  }
  // Then prefill chunks, oldest request first.
  bool prefill = false;
  for (auto& rp : running_) {
    Live& r = *rp;
    const int32_t remaining = r.prompt_len() - r.prefilled;
    if (remaining <= 0 || tokens_left == 0) continue;
    int32_t n = std::min({remaining, int32_t(tokens_left), int32_t(chunk_cap)});
    int32_t rows = 0;
    if (r.req.return_prompt_logits) {
      n = std::min(n, int32_t(rows_left));
      rows = n;
    } else if (n == remaining && r.req.max_tokens > 0) {
      rows = 1;  // the last prompt token's logits give the first sample
      if (rows_left == 0) {
        n = remaining - 1;
        rows = 0;
      }
    }
    if (n <= 0) continue;
    add(r, false, r.prefilled, n, rows, r.req.prompt.data() + r.prefilled);
    prefill = true;
  }

  if (entries.empty()) {
    // Every running request waits for a KV block that only another's end would free: fail the
    // newest so the others can go on.
    if (!blocked.empty()) {
      Live& r = *blocked.back();
      finish(r, FinishReason::kFailed,
             name_of(r.id) + ": KV cache exhausted: no free block for its next token (" +
                 std::to_string(model_->kv_cache().blocks().n_blocks()) + " blocks of " +
                 std::to_string(model_->kv_cache().blocks().block_size()) +
                 " tokens, all held by running requests)");
    }
    drop_finished();
    if (callback_error_) std::rethrow_exception(std::exchange(callback_error_, nullptr));
    return 0;
  }
  note_kv_peaks();

  // Greedy sampling on the device when every wanted row is a greedy sample whose logits nobody
  // reads: one id per row comes back instead of the rows (EngineOptions::Fusion::argmax).
  bool argmax = model_->options().fuse.argmax && !b.logit_rows.empty();
  for (const auto& e : entries)
    if (e.n_rows > 0 && (e.r->req.return_prompt_logits || e.r->req.return_logits ||
                         e.r->req.sampling.temperature > 0.0f))
      argmax = false;
  const auto t0 = Clock::now();
  std::vector<float> logits;
  std::vector<int32_t> ids;
  auto fail_step = [&](const std::exception& e) {
    for (auto& e2 : entries)
      finish(*e2.r, FinishReason::kFailed, name_of(e2.r->id) + ": step failed: " + e.what());
    drop_finished();
    if (callback_error_) std::rethrow_exception(std::exchange(callback_error_, nullptr));
    return 0;
  };
  // A greedy decode step that may chain: submitted now, read by the next step().
  if (argmax && !prefill && model_->can_chain()) {
    try {
      model_->submit_argmax(b, false);
    } catch (const std::exception& e) {
      return fail_step(e);
    }
    chained_ = std::make_unique<Chained>();
    chained_->entries = std::move(entries);
    for (auto& e : chained_->entries) e.r->in_flight = true;
    counters_.decode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    return int(b.tokens.size());
  }
  try {
    if (argmax)
      ids = model_->forward_argmax(b);
    else
      logits = model_->forward(b);
  } catch (const std::exception& e) {
    return fail_step(e);
  }
  emit(entries, logits, ids, argmax);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  (prefill ? counters_.prefill_seconds : counters_.decode_seconds) += s;
  ++counters_.steps;
  drop_finished();
  if (callback_error_) std::rethrow_exception(std::exchange(callback_error_, nullptr));
  return int(b.tokens.size());
}

void Engine::emit(std::vector<StepEntry>& entries, const std::vector<float>& logits,
                  const std::vector<int32_t>& ids, bool argmax) {
  const size_t nv = model_->spec().hp.n_vocab;
  auto row = [&](int32_t i) { return std::span<const float>(logits.data() + size_t(i) * nv, nv); };
  for (auto& e : entries) {
    Live& r = *e.r;
    if (r.done) continue;  // a callback failed it earlier in this step (or it ended before)
    RequestOutput out;
    out.id = r.id;
    bool sample = false;
    if (e.decode) {
      ++counters_.decode_tokens;
      sample = true;
    } else {
      r.prefilled += e.n;
      counters_.prompt_tokens += uint64_t(e.n);
      if (r.req.return_prompt_logits) {
        out.prompt_logits =
            std::span<const float>(logits.data() + size_t(e.first_row) * nv, size_t(e.n_rows) * nv);
        out.prompt_first = e.first_pos;
      }
      const bool prompt_done = r.prefilled == r.prompt_len();
      sample = prompt_done && r.req.max_tokens > 0;
      if (prompt_done && r.req.max_tokens == 0) {
        out.finish = FinishReason::kLength;
        release(r);
        r.done = true;
        ++counters_.finished;
      }
    }
    if (sample) {
      // A greedy sample draws nothing from the sampler's RNG: taking the device's id leaves the
      // sampler as sample() would.
      const int32_t last = e.first_row + e.n_rows - 1;
      const int32_t token = argmax ? ids[size_t(last)] : r.sampler->sample(row(last));
      ++r.generated;
      out.token = token;
      if (r.req.return_logits) out.logits = row(last);
      if (r.req.is_eog && r.req.is_eog(token))
        out.finish = FinishReason::kEog;
      else if (r.generated >= r.req.max_tokens)
        out.finish = FinishReason::kLength;
      r.next = token;
      if (out.finished()) {
        release(r);
        r.done = true;
        r.next = -1;
        ++counters_.finished;
      }
    }
    if (sample || out.finished() || !out.prompt_logits.empty()) deliver(r, out);
  }
}

std::unique_ptr<Engine::Chained> Engine::try_chain(const Chained& prev) {
  if (!model_->can_chain() || !waiting_.empty()) return nullptr;
  {
    std::lock_guard lock(mutex_);
    if (!instructions_.empty()) return nullptr;
  }
  // Exactly the previous step's requests, in its row order (row i's id becomes token i), each
  // with another token to make after the one in flight.
  size_t live = 0;
  for (const auto& r : running_) live += r->done ? 0 : 1;
  if (live != prev.entries.size()) return nullptr;
  for (const auto& e : prev.entries)
    if (e.r->done || !e.r->has_seq || e.r->generated + 1 >= e.r->req.max_tokens) return nullptr;
  // One more position each, which the free blocks must hold for all of them together.
  const auto& cache = model_->kv_cache();
  for (int32_t g = 0; g < cache.n_groups(); ++g) {
    int32_t need = 0;
    for (const auto& e : prev.entries) need += cache.blocks(g).blocks_needed(e.r->seq, 1);
    if (need > cache.blocks(g).blocks_free()) return nullptr;
  }
  auto next = std::make_unique<Chained>();
  StepBatch b;
  for (const auto& e : prev.entries) {
    Live& r = *e.r;
    if (!kv_try_reserve(r.seq, 1))
      throw std::logic_error("engine: a KV block counted free could not be reserved");
    const int32_t i = int32_t(b.seqs.size());
    const int32_t pos = r.prompt_len() + r.generated;  // the token sampled in the step in flight
    next->entries.push_back(StepEntry{&r, true, pos, 1, i, 1});
    b.seqs.push_back(r.seq);
    b.tokens.push_back(0);  // copied on the device from the previous step's ids
    b.token_seq.push_back(i);
    b.token_pos.push_back(pos);
    b.logit_rows.push_back(i);
  }
  note_kv_peaks();
  model_->submit_argmax(b, true);
  return next;
}

int Engine::step_chained() {
  const auto t0 = Clock::now();
  std::unique_ptr<Chained> prev = std::move(chained_);
  std::unique_ptr<Chained> next;
  std::vector<int32_t> ids;
  std::string error;
  try {
    next = try_chain(*prev);
  } catch (const std::exception& e) {
    error = e.what();
  }
  try {
    ids = model_->collect_argmax();
  } catch (const std::exception& e) {
    if (error.empty()) error = e.what();
  }
  if (!error.empty()) {
    // The device or a buffer failed: read whatever is still in flight, fail the requests.
    try {
      while (model_->steps_in_flight() > 0) model_->collect_argmax();
    } catch (const std::exception&) {
    }
    for (auto& e : prev->entries) e.r->in_flight = false;
    for (kv::SeqId seq : std::exchange(deferred_free_, {})) kv_free(seq);
    for (auto& e : prev->entries)
      finish(*e.r, FinishReason::kFailed, name_of(e.r->id) + ": step failed: " + error);
    drop_finished();
    if (callback_error_) std::rethrow_exception(std::exchange(callback_error_, nullptr));
    return 0;
  }
  // The step read: sequences held for it are free now (their requests are in no later step).
  for (kv::SeqId seq : std::exchange(deferred_free_, {})) kv_free(seq);
  for (auto& e : prev->entries) e.r->in_flight = false;
  if (next)
    for (auto& e : next->entries) e.r->in_flight = true;
  // Aborts that came while the step ran take effect before its tokens go out (a client that
  // stopped a request gets nothing more); new requests wait for the next step().
  apply_instructions(false);
  emit(prev->entries, {}, ids, true);
  chained_ = std::move(next);
  counters_.decode_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  ++counters_.steps;
  drop_finished();
  if (callback_error_) std::rethrow_exception(std::exchange(callback_error_, nullptr));
  return int(ids.size());
}

void Engine::run_until_idle() {
  while (!idle()) {
    const auto before = counters_;
    const size_t n_instr = [&] {
      std::lock_guard lock(mutex_);
      return instructions_.size();
    }();
    if (step() == 0 && n_instr == 0 && counters_.failed == before.failed &&
        counters_.finished == before.finished && counters_.aborted == before.aborted)
      throw std::logic_error("engine: a step made no progress with requests pending");
  }
}

}  // namespace tessera::engine
