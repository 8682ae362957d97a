// The OpenCL forward pass over a Plan: one DeviceCtx per plan device, the paged KV cache on the
// layers' devices, and the model's layer list (host/engine/layers) uploaded to the devices the plan
// assigns and walked once per step: embedding, each layer's mixer then FFN, the output head.
#include "host/engine/opencl_model.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <sstream>

#include "devices/probes.h"
#include "host/engine/layers/attention.h"
#include "host/engine/planning.h"
#include "host/gguf/tensor_type.h"
#include "host/model/weights.h"
#include "host/ops/device/step_program.h"

namespace tessera::engine {

using Clock = std::chrono::steady_clock;

namespace {

// Step programs kept for replay: a decode shape per batch size and a few prefill chunk shapes.
constexpr size_t kMaxCachedPrograms = 16;

// What a recorded step depends on besides buffer contents: the batch's size and logit rows and, per
// device and KV group, the batch buffer and its layout (not the positions: they are read from the
// buffer).
struct StepShape {
  int n_tokens = 0;
  std::vector<int32_t> logit_rows;
  std::vector<kv::KvBatchView> views;  // per plan device, per group; empty where no layer runs
  // Per plan device, the recurrent mixers' batch buffer and its sequence count (empty: none there).
  std::vector<std::pair<cl_mem, int32_t>> recurrent;

  bool operator==(const StepShape& o) const {
    if (n_tokens != o.n_tokens || logit_rows != o.logit_rows || views.size() != o.views.size() ||
        recurrent != o.recurrent)
      return false;
    for (size_t i = 0; i < views.size(); ++i) {
      const auto &a = views[i], &b = o.views[i];
      if (a.meta != b.meta || a.block_tables_offset != b.block_tables_offset ||
          a.block_table_stride != b.block_table_stride ||
          a.token_seq_offset != b.token_seq_offset || a.token_pos_offset != b.token_pos_offset ||
          a.token_slot_offset != b.token_slot_offset ||
          a.max_context_offset != b.max_context_offset || a.n_seqs != b.n_seqs ||
          a.n_tokens != b.n_tokens || a.context_capacity != b.context_capacity)
        return false;
    }
    return true;
  }
};

}  // namespace

struct OpenClModel::CachedProgram {
  StepShape shape;
  ops::StepProgram program;
};

OpenClModel::OpenClModel(const model::ModelSpec& spec, const DeviceRegistry& registry,
                         sched::Plan plan, const sched::ModelFootprint& footprint,
                         EngineOptions options)
    : spec_(spec),
      plan_(std::move(plan)),
      footprint_(footprint),
      options_(std::move(options)),
      uploader_(upload_bytes(spec_), options_.progress) {
  const auto& hp = spec_.hp;
  if (options_.max_logit_rows <= 0) options_.max_logit_rows = options_.max_sequences;
  options_.max_logit_rows = std::min(options_.max_logit_rows, options_.max_batch_tokens);
  if (options_.max_context <= 0)
    options_.max_context = int(std::min<uint32_t>(hp.n_ctx_train ? hp.n_ctx_train : 4096, 4096));
  const int T = options_.max_batch_tokens;
  const int K = std::max<int>(1, int(hp.n_expert_used));
  if (options_.kv_block_size < 1)
    throw std::invalid_argument("kv_block_size " + std::to_string(options_.kv_block_size) +
                                " must be at least 1");
  const int blocks_per_seq =
      (options_.max_context + options_.kv_block_size - 1) / options_.kv_block_size;

  // Devices of the plan.
  DeviceCtxSizes sizes;
  sizes.max_tokens = T;
  sizes.max_pairs = T * K;
  sizes.n_embd = hp.n_embd;
  sizes.max_ff = std::max({hp.n_ff, hp.n_ff_exp, hp.n_ff_shexp});
  sizes.n_expert = hp.n_expert;
  sizes.experts_per_token = uint32_t(K);
  std::vector<bool> holds_layers(plan_.devices.size(), false);
  for (int l : plan_.layer_device) holds_layers[size_t(l)] = true;
  holds_layers[size_t(plan_.attention_device)] = true;
  for (size_t d = 0; d < plan_.devices.size(); ++d) {
    const Device& dev = registry.get(plan_.devices[d].id);
    sizes.shared_stage = options_.zero_copy && plan_.devices.size() > 1 && !holds_layers[d] &&
                         dev.info().caps.unified_memory && dev.info().caps.svm_fine_grain;
    auto c = std::make_unique<DeviceCtx>(int(d), dev, sizes, options_.profile);
    c->has_layers = holds_layers[d];
    c->fold_swiglu = options_.fuse.swiglu && dev.info().type != DeviceType::kCpu;
    c->glu_out = options_.fuse.glu && !c->fold_swiglu;
    c->fused_attention_reduce = options_.fuse.attn_reduce;
    c->finish_in_decode = options_.fuse.decode_finish;
    c->combine_in_down = options_.fuse.down_combine;
    c->expert_ffn = options_.fuse.expert_ffn && c->glu_out && c->combine_in_down &&
                    dev.info().type == DeviceType::kCpu;
    ctxs_.push_back(std::move(c));
  }
  // Devices with layers read router choices and activations and receive partial sums through
  // host memory when experts run elsewhere: pinned, where the device can pin it.
  if (ctxs_.size() > 1 && options_.zero_copy)
    for (auto& c : ctxs_) {
      if (!c->has_layers) continue;
      try {
        c->pin_stage(int(ctxs_.size()));
      } catch (const ClError& e) {
        spdlog::warn("{}: MoE stage in pageable host memory (pinning failed: {})", c->dev->id(),
                     e.what());
      }
    }
  for (auto& c : ctxs_) {
    if (!c->has_layers) continue;
    c->allocate_attention(T, options_.max_sequences, blocks_per_seq, hp.q_dim(), hp.kv_dim(),
                          spec_.arch->gated_attention ? hp.q_dim() : 0);
    if (spec_.rope_freqs) {
      const std::vector<float> f = model::to_floats(*spec_.rope_freqs);
      c->rope_freqs = c->dev->alloc(f.size() * sizeof(float), CL_MEM_READ_ONLY);
      c->dev->write(c->rope_freqs.get(), 0, f.data(), f.size() * sizeof(float));
    }
  }

  // Sequence memory, as the layers declare it: each attention layer's KV pools on its device, in
  // the layout the cache decides (the attention ops take their shape and format from it), grouped
  // by window; a recurrent-state pool when a layer keeps state.
  layers_ = make_layers(spec_, &moe_);
  for (auto& layer : layers_) moe_.layers.push_back(layer.ffn->routed());
  std::vector<const Device*> layer_devices;
  for (int d : plan_.layer_device) layer_devices.push_back(ctx(d).dev);
  kv::KvCacheConfig kcfg;
  kcfg.n_layer = int32_t(hp.n_layer);
  kcfg.n_head_kv = int32_t(hp.n_head_kv);
  kcfg.head_dim = int32_t(hp.head_dim);
  kcfg.block_size = options_.kv_block_size;
  kcfg.n_blocks =
      options_.kv_blocks > 0 ? options_.kv_blocks : options_.max_sequences * blocks_per_seq;
  kv::RecurrentStateConfig rcfg;
  rcfg.max_sequences = options_.max_sequences;
  bool has_state = false;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerMemoryNeeds needs = layers_[l].mixer->memory();
    kcfg.layer_n_head_kv.push_back(int32_t(spec_.layers[l].n_head_kv));
    kcfg.layer_window.push_back(int32_t(needs.window));
    kcfg.layer_k_format.push_back(options_.kv_formats.k_at(l));
    kcfg.layer_v_format.push_back(options_.kv_formats.v_at(l));
    rcfg.layer_bytes.push_back(needs.state_bytes);
    has_state |= needs.state_bytes > 0;
  }
  memory_ = std::make_unique<kv::SequenceMemory>(
      std::make_unique<kv::PagedKvCache>(kcfg, layer_devices),
      has_state ? std::make_unique<kv::RecurrentStatePool>(rcfg, layer_devices) : nullptr);

  std::vector<std::string> ids;
  for (const auto& d : plan_.devices) ids.push_back(d.id);
  executor_ = std::make_unique<sched::Executor>(ids);
  balancer_ = std::make_unique<sched::ExpertBalancer>(
      footprint_, options_.balancer && plan_.devices.size() > 1);
  stats_.device_seconds.assign(plan_.devices.size(), 0.0);
  stats_.expert_hits.assign(plan_.devices.size(), 0);
  moe_.plan = &plan_;
  moe_.devices = &ctxs_;
  moe_.executor = executor_.get();
  moe_.balancer = balancer_.get();
  moe_.stats = &stats_;
  if (balancer_->enabled()) {
    // Pinned memory for the balancer's copies of the router choices on devices that route layers.
    moe_.choice_ints = size_t(T) * size_t(K);
    moe_.choice_layers = int(spec_.layers.size());
    moe_.choice_memory.resize(ctxs_.size());
    for (auto& c : ctxs_) {
      if (!c->has_layers) continue;
      try {
        moe_.choice_memory[size_t(c->index)] = std::make_unique<PinnedBytes>(
            *c->dev, 2 * size_t(moe_.choice_layers) * moe_.choice_ints * sizeof(int32_t));
      } catch (const ClError& e) {
        spdlog::warn(
            "{}: no pinned host memory for the balancer's router choices ({}); they are "
            "read into pageable memory",
            c->dev->id(), e.what());
      }
    }
  }

  // Weights: the embedding table stays in its ggml format (rows looked up per token).
  DeviceCtx& home = ctx(plan_.attention_device);
  embd_table_ = home.dev->alloc(spec_.token_embd->n_bytes(), CL_MEM_READ_ONLY);
  home.dev->write(embd_table_.get(), 0, spec_.token_embd->data, spec_.token_embd->n_bytes());
  uploader_.count(spec_.token_embd->n_bytes());
  output_norm_ = uploader_.norm(home, spec_.output_norm);
  if (hp.logit_scale != 1.0f) {
    // Granite divides the logits by logit_scale: the output projection is linear, so the output
    // norm's weights carry the factor (no launch).
    std::vector<float> w = model::to_floats(*spec_.output_norm);
    for (float& v : w) v /= hp.logit_scale;
    home.dev->write(output_norm_.get(), 0, w.data(), w.size() * sizeof(float));
  }
  output_ = uploader_.matrix(home, spec_.output_tied ? spec_.token_embd : spec_.output);
  home.logits = home.dev->alloc(size_t(options_.max_logit_rows) * hp.n_vocab * 4);
  home.ids = home.dev->alloc(size_t(options_.max_logit_rows) * 4);
  for (size_t l = 0; l < layers_.size(); ++l) {
    DeviceCtx& c = ctx(plan_.layer_device[l]);
    layers_[l].mixer->upload(c, uploader_, kv_cache(), options_);
    layers_[l].ffn->upload(c, uploader_, options_);
  }
  // Split-K decode scratch, for the largest attention shape on each device.
  for (auto& c : ctxs_) {
    for (auto& [heads, op] : c->attention_ops)
      c->workspace_bytes = std::max(
          c->workspace_bytes, op->decode_workspace_bytes(options_.max_sequences,
                                                         blocks_per_seq * options_.kv_block_size));
    if (c->workspace_bytes) c->workspace = c->dev->alloc(c->workspace_bytes);
  }
  for (auto& c : ctxs_) c->dev->finish();
  count_launches();
  balancer_->update_model(footprint_);  // made before the launches were counted
  sched::predict(plan_, footprint_);
  if (options_.launch_prices) store_launch_counts();
  // A device whose decode launches were not priced for this model yet (plan_for took the cached
  // prices): profile a few decode steps to price them.
  if (options_.launch_prices && options_.replay && !options_.profile) {
    for (size_t d = 0; d < ctxs_.size(); ++d)
      if (plan_.decode_seconds[d] > 0 &&
          !options_.launch_prices->load_launch_us(ctxs_[d]->dev->info(), price_key(d))) {
        calibration_skip_ = 3;
        calibration_steps_ = 3;
      }
  }
}

const std::string& OpenClModel::price_key(size_t d) const {
  if (price_keys_.empty()) {
    const std::string switches = switches_key(options_);
    for (const auto& c : ctxs_)
      price_keys_.push_back(launch_price_key(*c->dev, footprint_, switches));
  }
  return price_keys_[d];
}

void OpenClModel::store_launch_counts() const {
  for (size_t d = 0; d < ctxs_.size(); ++d) {
    const Device& dev = *ctxs_[d]->dev;
    const std::string key = price_key(d) + "|launches ";
    std::map<std::string, double> counts;
    if (int(d) == plan_.attention_device) {
      counts[key + "embedding"] = footprint_.embedding_launches;
      counts[key + "output"] = footprint_.output_launches;
    }
    for (size_t l = 0; l < layers_.size(); ++l) {
      if (plan_.layer_device[l] != int(d)) continue;
      const MoeFfn* routed = layers_[l].ffn->routed();
      // A layer with experts elsewhere counts its host sync among its dense launches.
      if (routed && !routed->experts_all_on_home()) continue;
      const auto& fl = footprint_.layers[l];
      counts[key + "dense " + std::to_string(l)] = fl.dense_launches;
      if (routed) counts[key + "expert " + std::to_string(l)] = fl.expert_launches;
    }
    std::erase_if(counts, [](const auto& c) { return c.second <= 0; });
    options_.launch_prices->store_launch_us(dev.info(), counts);
  }
}

bool OpenClModel::calibrates_next(bool decode, int n) {
  if (!decode || calibration_steps_ == 0) return false;
  if (n != 1) {
    // Decode steps of several sequences only (a busy server): give up rather than keep the
    // steps unchained.
    if (++calibration_missed_ >= 64) calibration_steps_ = calibration_skip_ = 0;
    return false;
  }
  if (calibration_skip_ > 0) {
    --calibration_skip_;
    calibration_timed_ = true;  // its wall time, unprofiled
    return false;
  }
  return true;
}

void OpenClModel::add_calibration(const std::vector<ops::StepProgram::Profile::Timed>& times) {
  calibration_busy_.resize(ctxs_.size());
  calibration_launches_.resize(ctxs_.size());
  for (const auto& t : times) {
    if (t.record->kind != ops::StepProgram::Kind::kLaunch) continue;
    for (size_t d = 0; d < ctxs_.size(); ++d)
      if (ctxs_[d]->dev == t.record->device) {
        calibration_busy_[d] += t.seconds;
        ++calibration_launches_[d];
      }
  }
  ++calibration_done_;
  ++stats_.calibration_steps;
  if (--calibration_steps_ == 0) finish_calibration();
}

void OpenClModel::finish_calibration() {
  const auto load = balancer_->enabled() ? std::optional(balancer_->load()) : std::nullopt;
  const auto* observed = load ? &*load : nullptr;
  const std::vector<double> streaming = sched::streaming_seconds(plan_, footprint_, observed);
  const double steps = std::max(1, calibration_done_);
  for (size_t d = 0; d < ctxs_.size(); ++d) {
    sched::DeviceCost& cost = plan_.devices[d];
    const double launches = double(calibration_launches_[d]) / steps;
    // A plan of one device: the whole step is that device's, the hand-over between its launches
    // (PoCL: ~22 us each on the 16-core Xeon) included, so its unprofiled wall time counts where it
    // is above the kernels' device time.
    const double kernels = calibration_busy_[d] / steps;
    const double wall =
        ctxs_.size() == 1 && std::isfinite(calibration_wall_) ? calibration_wall_ : 0.0;
    const double busy = std::max(kernels, wall);
    const double floor_us = cost.probe_launch_us > 0 ? cost.probe_launch_us : cost.launch_us;
    const double us = sched::calibrated_launch_us(floor_us, busy, launches, streaming[d]);
    if (!(us > 0)) continue;
    spdlog::info(
        "{}: a decode launch costs {:.1f} us ({:.0f} launches a token took {:.3f} ms of device "
        "time{}, {:.3f} ms of it streaming weights by the plan; at least {:.1f} us, the {})",
        cost.id, us, launches, kernels * 1e3,
        wall > 0 ? fmt::format(", the step {:.3f} ms of wall time", wall * 1e3) : std::string(),
        streaming[d] * 1e3, floor_us,
        cost.probe_launch_us > 0 ? "launch probe's" : "unprobed default");
    cost.launch_us = us;
    options_.launch_prices->store_launch_us(ctxs_[d]->dev->info(), price_key(d), us);
  }
  sched::predict(plan_, footprint_, observed);
}

OpenClModel::~OpenClModel() {
  for (auto& c : ctxs_) {
    try {
      c->dev->finish();
      if (c->copy_queue) CL_CHECK(clFinish(c->copy_queue.get()), c->dev->info().label());
    } catch (const std::exception& e) {
      spdlog::warn("{}: finish at shutdown failed: {}", c->dev->id(), e.what());
    }
  }
}

void OpenClModel::check(const StepBatch& b) const {
  const auto& hp = spec_.hp;
  const int n = int(b.tokens.size());
  if (n == 0) throw std::invalid_argument("forward: empty batch");
  if (n > options_.max_batch_tokens)
    throw std::invalid_argument("forward: " + std::to_string(n) +
                                " tokens exceed the step limit of " +
                                std::to_string(options_.max_batch_tokens));
  if (b.token_seq.size() != size_t(n) || b.token_pos.size() != size_t(n))
    throw std::invalid_argument("forward: tokens, token_seq and token_pos differ in length");
  if (int(b.seqs.size()) > options_.max_sequences)
    throw std::invalid_argument("forward: " + std::to_string(b.seqs.size()) +
                                " sequences exceed the limit of " +
                                std::to_string(options_.max_sequences));
  if (int(b.logit_rows.size()) > options_.max_logit_rows)
    throw std::invalid_argument("forward: at most " + std::to_string(options_.max_logit_rows) +
                                " logit rows per step");
  for (int32_t t : b.tokens)
    if (t < 0 || uint32_t(t) >= hp.n_vocab)
      throw std::invalid_argument("forward: token id " + std::to_string(t) +
                                  " outside the vocabulary of " + std::to_string(hp.n_vocab));
  for (int32_t r : b.logit_rows)
    if (r < 0 || r >= n)
      throw std::invalid_argument("forward: logit row " + std::to_string(r) +
                                  " is not a batch token");
}

std::vector<float> OpenClModel::forward(const StepBatch& b) {
  return run(b, nullptr);
}

std::vector<int32_t> OpenClModel::forward_argmax(const StepBatch& b) {
  std::vector<int32_t> ids;
  run(b, &ids);
  return ids;
}

std::vector<float> OpenClModel::run(const StepBatch& b, std::vector<int32_t>* ids) {
  check(b);
  if (!in_flight_.empty())
    throw std::logic_error("forward: " + std::to_string(in_flight_.size()) +
                           " chained step(s) not collected");
  const auto& hp = spec_.hp;
  const auto t_start = Clock::now();
  DeviceCtx& home = ctx(plan_.attention_device);
  last_submitted_rows_ = 0;                          // home.ids will hold this step's ids, if any
  std::optional<ops::StepProgram::Profile> profile;  // a profiled replay's events
  const bool decode = enqueue_batch(b, nullptr, b.tokens.data(), profile);
  const auto t_wait = Clock::now();
  std::vector<float> logits;
  if (!b.logit_rows.empty() && ids) {
    // Greedy rows: their argmax on the device, after the step on the same (in-order) queue.
    const uint32_t rows = uint32_t(b.logit_rows.size());
    home.ew->argmax_rows(home.logits.get(), 0, rows, uint32_t(hp.n_vocab), home.ids.get(), 0);
    ids->resize(rows);
    home.dev->read(home.ids.get(), 0, ids->data(), size_t(rows) * 4, true);
    ++stats_.argmax_steps;
  } else if (!b.logit_rows.empty()) {
    logits.resize(b.logit_rows.size() * hp.n_vocab);
    home.dev->read(home.logits.get(), 0, logits.data(), logits.size() * 4, true);
  } else {
    home.dev->finish();
  }
  for (auto& c : ctxs_)
    if (c.get() != &home && c->has_layers) c->dev->finish();
  end_step();
  const auto t_end = Clock::now();
  record_timing(decode, std::chrono::duration<double>(t_wait - t_start).count(),
                std::chrono::duration<double>(t_end - t_wait).count(), profile);
  return logits;
}

bool OpenClModel::can_chain() const {
  // Calibration steps (and the ones it skips first) run unchained, so that they are profiled.
  if (!options_.pipeline || !options_.replay || options_.profile || profile_replays_ ||
      !options_.fuse.argmax || calibration_steps_ > 0)
    return false;
  const int home = plan_.attention_device;
  for (int d : plan_.layer_device)
    if (d != home) return false;
  for (const auto& layer : plan_.expert_device)
    for (int d : layer)
      if (d != home) return false;
  return true;
}

void OpenClModel::submit_argmax(const StepBatch& b, bool tokens_from_previous) {
  check(b);
  if (!can_chain()) throw std::logic_error("submit_argmax: this model's steps cannot be chained");
  if (in_flight_.size() >= 2)
    throw std::logic_error("submit_argmax: two steps in flight already; collect one first");
  const int n = int(b.tokens.size());
  if (b.logit_rows.empty()) throw std::invalid_argument("submit_argmax: the batch wants no rows");
  if (tokens_from_previous) {
    bool one_row_per_token = int(b.logit_rows.size()) == n && b.seqs.size() == size_t(n);
    for (int i = 0; one_row_per_token && i < n; ++i)
      one_row_per_token = b.logit_rows[size_t(i)] == i;
    if (!one_row_per_token)
      throw std::invalid_argument(
          "submit_argmax: tokens from the previous step need one token per sequence, each its own "
          "logit row in order");
    if (n > last_submitted_rows_)
      throw std::invalid_argument("submit_argmax: " + std::to_string(n) +
                                  " tokens from a previous step of " +
                                  std::to_string(last_submitted_rows_) + " rows");
  }
  const auto& hp = spec_.hp;
  const auto t_start = Clock::now();
  DeviceCtx& home = ctx(plan_.attention_device);
  std::optional<ops::StepProgram::Profile> profile;  // stays empty: chaining excludes profiling
  InFlight f;
  // The write of the tokens is not waited for: it reads them from f, which lives until the read.
  if (!tokens_from_previous) f.tokens = b.tokens;
  f.decode =
      enqueue_batch(b, tokens_from_previous ? home.ids.get() : nullptr, f.tokens.data(), profile);
  const uint32_t rows = uint32_t(b.logit_rows.size());
  home.ew->argmax_rows(home.logits.get(), 0, rows, uint32_t(hp.n_vocab), home.ids.get(), 0);
  f.ids.resize(rows);
  // In queue order: before the next step's copy of these ids into its tokens and its argmax.
  CL_CHECK(clEnqueueReadBuffer(home.dev->queue(), home.ids.get(), CL_FALSE, 0, size_t(rows) * 4,
                               f.ids.data(), 0, nullptr, f.read.out()),
           home.dev->info().label());
  ops::flush(*home.dev);
  f.enqueue_seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  f.choices = moe_.pending_choices.size();
  last_submitted_rows_ = int(rows);
  in_flight_.push_back(std::move(f));
  ++stats_.argmax_steps;
  if (tokens_from_previous) ++stats_.chained_steps;
}

std::vector<int32_t> OpenClModel::collect_argmax() {
  if (in_flight_.empty()) throw std::logic_error("collect_argmax: no step in flight");
  InFlight f = std::move(in_flight_.front());
  in_flight_.pop_front();
  const auto t_wait = Clock::now();
  CL_CHECK(clWaitForEvents(1, f.read.ptr()), ctx(plan_.attention_device).dev->info().label());
  // The choices this step read for the balancer are complete (queue order); a later step's are
  // not yet.
  end_step(f.choices);
  for (auto& later : in_flight_) later.choices -= std::min(later.choices, f.choices);
  std::optional<ops::StepProgram::Profile> none;
  record_timing(f.decode, f.enqueue_seconds,
                std::chrono::duration<double>(Clock::now() - t_wait).count(), none);
  return std::move(f.ids);
}

bool OpenClModel::enqueue_batch(const StepBatch& b, cl_mem tokens, const int32_t* host_tokens,
                                std::optional<ops::StepProgram::Profile>& profile) {
  const int n = int(b.tokens.size());
  DeviceCtx& home = ctx(plan_.attention_device);
  moe_.begin_step();
  moe_.count_choices = n > 1 || enqueued_steps_ % MoeRuntime::kChoiceSampleSteps == 0;
  // At most two steps are pending (one in flight beside this one): they use different slots.
  moe_.choice_slot = int(enqueued_steps_ % 2);
  ++enqueued_steps_;
  // The batch (block tables, positions, slots) on every device that holds layers, once per KV
  // group of its layers (each window group has its own block tables and slots).
  for (auto& c : ctxs_)
    for (size_t g = 0; g < c->batches.size(); ++g)
      if (c->batches[g])
        c->views[g] =
            c->batches[g]->upload(kv_cache().blocks(int32_t(g)), b.seqs, b.token_seq, b.token_pos);
  // The recurrent mixers' batch (first row, count, state slot per sequence) likewise.
  for (auto& c : ctxs_)
    if (c->recurrent_batch)
      c->recurrent_view = c->recurrent_batch->upload(*memory_->states(), b.seqs, b.token_seq);
  // Decode kernel when every sequence contributes exactly one token; the prefill kernel otherwise.
  const bool decode = size_t(n) == b.seqs.size();
  moe_.sync_timing = &stats_.step_timing[decode ? "decode" : "prefill"].sync;
  if (tokens)
    CL_CHECK(clEnqueueCopyBuffer(home.dev->queue(), tokens, home.tokens.get(), 0, 0, size_t(n) * 4,
                                 0, nullptr, nullptr),
             home.dev->info().label());
  else
    home.dev->write(home.tokens.get(), 0, host_tokens, size_t(n) * 4, false);

  // A step of a shape seen before replays its recorded program: everything that differs between
  // its steps (tokens, block tables, positions, slots, longest context) was just written to device
  // buffers. Profiling (events per launch) enqueues afresh; balancer moves drop the programs
  // (end_step), and its copies of the router's choices are host calls of the program.
  if (options_.replay && !options_.profile) {
    StepShape shape;
    shape.n_tokens = n;
    shape.logit_rows = b.logit_rows;
    for (auto& c : ctxs_)
      for (int32_t g = 0; g < kv_cache().n_groups(); ++g)
        shape.views.push_back(size_t(g) < c->views.size() ? c->views[size_t(g)]
                                                          : kv::KvBatchView{});
    for (auto& c : ctxs_)
      shape.recurrent.emplace_back(c->recurrent_view.seqs, c->recurrent_view.n_seqs);
    auto it = std::find_if(programs_.begin(), programs_.end(),
                           [&](const auto& p) { return p->shape == shape; });
    if (it == programs_.end()) {
      auto p = std::make_unique<CachedProgram>();
      p->shape = std::move(shape);
      std::vector<const Device*> devices;
      for (auto& c : ctxs_) devices.push_back(c->dev);
      {
        ops::Recording recording(p->program, devices);
        enqueue_step(b, n, decode);
      }
      if (programs_.size() >= kMaxCachedPrograms) programs_.erase(programs_.begin());
      programs_.push_back(std::move(p));
      ++recorded_steps_;
    } else {
      std::rotate(it, it + 1, programs_.end());  // most recently used last
      ++replayed_steps_;
      calibration_step_ = calibrates_next(decode, n);
      if (profile_replays_ || calibration_step_) profile.emplace();
    }
    programs_.back()->program.run(profile ? &*profile : nullptr);
  } else {
    enqueue_step(b, n, decode);
  }
  return decode;
}

void OpenClModel::record_timing(bool decode, double enqueue, double wait,
                                std::optional<ops::StepProgram::Profile>& profile) {
  const char* kind = decode ? "decode" : "prefill";
  const double wall = enqueue + wait;
  stats_.op_seconds[kind] += wall;
  StepTiming& timing = stats_.step_timing[kind];
  ++timing.steps;
  timing.wall += wall;
  timing.enqueue += enqueue;
  timing.wait += wait;
  if (std::exchange(calibration_timed_, false))
    calibration_wall_ = std::min(calibration_wall_, wall);
  if (!profile) return;
  const bool calibrating = std::exchange(calibration_step_, false);
  std::vector<ops::StepProgram::Profile::Timed> times;
  try {
    times = profile->collect();
  } catch (const ClError& e) {
    if (!calibrating || profile_replays_) throw;
    // The calibration is optional: a driver that cannot time its events leaves the probe's prices.
    spdlog::warn("decode launches not priced (the step's events have no times): {}", e.what());
    calibration_steps_ = calibration_skip_ = 0;
    return;
  }
  if (calibrating) add_calibration(times);
  if (!profile_replays_) return;  // a calibration step only
  ReplayProfile& rp = stats_.replay_profile[kind];
  ++rp.steps;
  rp.launches += profile->launches;
  rp.copies += profile->copies;
  rp.flushes += profile->flushes;
  rp.host_calls += profile->host_calls;
  rp.host_syncs += profile->host_syncs;
  rp.wall += wall;
  for (const auto& t : times) {
    auto& k =
        rp.kernels[{t.record->device->id(),
                    t.record->kind == ops::StepProgram::Kind::kLaunch ? t.record->name : "copy"}];
    ++k.launches;
    k.seconds += t.seconds;
  }
}

const ops::StepProgram* OpenClModel::latest_program() const {
  return programs_.empty() ? nullptr : &programs_.back()->program;
}

void OpenClModel::enqueue_step(const StepBatch& b, int n, bool decode) {
  const auto& hp = spec_.hp;
  DeviceCtx& home = ctx(plan_.attention_device);
  LayerStep step;
  step.n_tokens = n;
  step.decode = decode;
  step.options = &options_;
  step.kv = &kv_cache();
  step.states = memory_->states();
  auto mark = [&] {
    if (step_marks_) step_marks_->push_back(ops::recording_for(*home.dev)->launches());
  };
  const ops::DeviceTable table{embd_table_.get(), 0, spec_.token_embd->type, hp.n_embd, hp.n_vocab};
  home.embed->lookup(table, home.tokens.get(), 0, uint32_t(n), home.x.get(), 0,
                     {{}, home.prof("embedding")});
  if (hp.embedding_scale != 1.0f)  // Granite's embedding multiplier
    home.ew->scale(home.x.get(), 0, uint64_t(n) * hp.n_embd, hp.embedding_scale,
                   {{}, home.prof("elementwise")});
  mark();

  DeviceCtx* cur = &home;
  const size_t stream_bytes = size_t(n) * hp.n_embd * 4;
  bool prenormed = false;  // xn already holds this layer's normed mixer input
  // The output norm in the last layer's combine (as a next layer's norm), where the logit rows
  // are the step's tokens in order (xn's rows then are the head's) and that layer is at home. (The
  // output projection in that launch too, as a next layer's input projection, was no faster on
  // the 2-core machine: bench/END_TO_END.md.)
  bool logits_all = int(b.logit_rows.size()) == n;
  for (int i = 0; logits_all && i < n; ++i) logits_all = b.logit_rows[size_t(i)] == i;
  bool head_normed = false;
  for (size_t l = 0; l < layers_.size(); ++l) {
    DeviceCtx& c = ctx(plan_.layer_device[l]);
    if (&c != cur) {
      copy_between(*cur, cur->x.get(), 0, c, c.x.get(), 0, stream_bytes);
      cur = &c;
    }
    const bool next_here = options_.fuse.combine_norm && l + 1 < layers_.size() &&
                           &ctx(plan_.layer_device[l + 1]) == &c;
    const bool head_here = options_.fuse.combine_norm && options_.fuse.head && logits_all &&
                           l + 1 == layers_.size() && &c == &home;
    const cl_mem next_norm = next_here   ? layers_[l + 1].mixer->input_norm()
                             : head_here ? output_norm_.get()
                                         : nullptr;
    // The MoE block's routing in the mixer's output launch, where it can (MoeFfn::route_tail),
    // and with a plain MoE FFN (nothing between its routing and experts) maybe its experts too,
    // and then the next layer's input projection.
    MoeFfn* moe = layers_[l].ffn->routed();
    const bool plain_moe = moe && moe == dynamic_cast<MoeFfn*>(layers_[l].ffn.get());
    InputProjection next_proj = next_here && options_.fuse.next_qkv
                                    ? layers_[l + 1].mixer->input_projection(c)
                                    : InputProjection{};
    // And with it the next layer's decode attention (RouteTail::Ffn::attention).
    ops::RouteTail::Ffn::Attention next_attention;
    if (next_here && next_proj.w && options_.fuse.next_attention &&
        layers_[l + 1].mixer->decode_attention(c, step, next_attention))
      next_proj.attention = &next_attention;
    const ops::RouteTail* route =
        moe ? moe->route_tail(c, step, plain_moe, next_norm, next_proj) : nullptr;
    step.route = route;
    step.routed = layers_[l].mixer->forward(c, step, prenormed);
    step.route = nullptr;
    const bool projects_next = step.routed && route->ffn && route->ffn->next;
    const bool attends_next = projects_next && route->ffn->attention;
    // Submit what is queued: some drivers (NVIDIA's) hold commands until a flush or a wait, so
    // without this the device would idle while the host enqueues the whole step.
    if (options_.flush_per_layer) ops::flush(*c.dev);
    prenormed = layers_[l].ffn->forward(c, step, next_norm);
    if (head_here) head_normed = prenormed;
    step.routed = false;
    step.projected = projects_next;
    step.attended = attends_next;
    mark();
  }
  if (cur != &home) copy_between(*cur, cur->x.get(), 0, home, home.x.get(), 0, stream_bytes);
  output_head(home, b, head_normed);
  mark();
}

void OpenClModel::output_head(DeviceCtx& home, const StepBatch& b, bool normed) {
  const auto& hp = spec_.hp;
  const uint32_t E = hp.n_embd;
  const bool consecutive =
      std::adjacent_find(b.logit_rows.begin(), b.logit_rows.end(),
                         [](int32_t a, int32_t c) { return c != a + 1; }) == b.logit_rows.end();
  if (normed) {
    // The last layer's combine wrote the rows (enqueue_step).
  } else if (consecutive && !b.logit_rows.empty()) {
    home.norm->rms_norm(home.x.get(), uint32_t(b.logit_rows[0]) * E, output_norm_.get(), 0,
                        home.xn.get(), 0, uint32_t(b.logit_rows.size()), E, hp.rms_eps,
                        {{}, home.prof("norm")});
  } else {
    for (size_t i = 0; i < b.logit_rows.size(); ++i) {
      const uint32_t row = uint32_t(b.logit_rows[i]);
      home.norm->rms_norm(home.x.get(), row * E, output_norm_.get(), 0, home.xn.get(),
                          uint32_t(i) * E, 1, E, hp.rms_eps, {{}, home.prof("norm")});
    }
  }
  if (!b.logit_rows.empty())
    home.mm->run(output_, home.xn.get(), 0, home.logits.get(), 0, int(b.logit_rows.size()), {},
                 home.prof("matmul"));
}

void OpenClModel::end_step(size_t choices) {
  for (auto& c : ctxs_) c->collect(stats_.device_op_seconds);
  ++stats_.steps;
  // The step's queues have finished: the balancer's counts of layers routed without a round trip.
  moe_.end_step(int(spec_.hp.n_expert_used), choices);
  balancer_->end_step();
  // Moves change the shards a step in flight reads: only between chains.
  if (balancer_->enabled() && in_flight_.empty()) {
    const auto moves = balancer_->rebalance(plan_);
    std::vector<bool> touched(layers_.size(), false);
    for (const auto& m : moves) touched[size_t(m.layer)] = true;
    for (size_t l = 0; l < touched.size(); ++l)
      if (MoeFfn* moe = layers_[l].ffn->routed(); touched[l] && moe) moe->upload_experts(uploader_);
    // The recorded steps launch the moved experts' old shards: record again.
    if (!moves.empty()) programs_.clear();
    stats_.balancer_moves = balancer_->moves();
  }
}

void OpenClModel::count_launches() {
  const auto& hp = spec_.hp;
  if (footprint_.layers.size() != spec_.layers.size())
    throw std::invalid_argument("footprint has " + std::to_string(footprint_.layers.size()) +
                                " layers, the model " + std::to_string(spec_.layers.size()));
  std::vector<const Device*> devices;
  for (auto& c : ctxs_) devices.push_back(c->dev);
  // One decode token of one sequence; a count-only program reads no buffer, so the batch views only
  // need the layout a real step of that shape has.
  StepBatch b;
  b.seqs = {0};
  b.tokens = {0};
  b.token_seq = {0};
  b.token_pos = {0};
  b.logit_rows = {0};
  for (auto& c : ctxs_) {
    for (auto& view : c->views) {
      view = kv::KvBatchView{};
      view.meta = c->tokens.get();
      view.n_seqs = 1;
      view.n_tokens = 1;
      view.max_context = 1;
    }
    if (c->recurrent_batch) c->recurrent_view = {c->tokens.get(), 0, 1};
  }
  std::vector<size_t> marks;
  {
    ops::StepProgram counting(ops::StepProgram::Mode::kCountOnly);
    ops::Recording recording(counting, devices);
    step_marks_ = &marks;
    try {
      enqueue_step(b, 1, true);
    } catch (...) {
      step_marks_ = nullptr;
      throw;
    }
    step_marks_ = nullptr;
  }
  const size_t L = layers_.size();
  if (marks.size() != L + 2) throw std::logic_error("count_launches: step boundaries missing");
  footprint_.embedding_launches = int(marks[0]);
  footprint_.output_launches = int(marks[L + 1] - marks[L]);
  for (size_t l = 0; l < L; ++l) {
    auto& fl = footprint_.layers[l];
    int layer_launches = int(marks[l + 1] - marks[l]);
    fl.expert_launches = 0;
    if (MoeFfn* routed = layers_[l].ffn->routed()) {
      auto& moe = *routed;
      fl.expert_launches = int(moe.count_expert_launches(int(hp.n_expert_used)));
      // Experts all on the layer's device run inside the step; otherwise from its host sync.
      if (moe.experts_all_on_home()) layer_launches -= fl.expert_launches;
    }
    fl.dense_launches = layer_launches;
  }
}

}  // namespace tessera::engine
