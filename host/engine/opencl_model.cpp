// The OpenCL forward pass over a Plan: weights uploaded per device, every op a kernel, the KV cache
// paged per layer device, MoE experts run where the plan put them (one launch per projection for
// all selected experts of a layer on a device), concurrently across devices through the executor.
#include "host/engine/opencl_model.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>

#include "host/gguf/tensor_type.h"
#include "host/model/reference_model.h"
#include "host/ops/device/activation.h"
#include "host/ops/device/attention.h"
#include "host/ops/device/elementwise.h"
#include "host/ops/device/embedding.h"
#include "host/ops/device/matmul.h"
#include "host/ops/device/moe.h"
#include "host/ops/device/norm.h"
#include "host/ops/device/rope.h"
#include "host/ops/device/routing.h"
#include "host/ops/device/step_program.h"

namespace tessera::engine {

using Clock = std::chrono::steady_clock;

namespace {
constexpr int kFoldSwigluMaxPairs = 64;
// Step programs kept for replay: a decode shape per batch size and a few prefill chunk shapes.
constexpr size_t kMaxCachedPrograms = 16;

// What a recorded step depends on besides buffer contents: the batch's size and logit rows and, per
// device, the batch buffer and its layout (not the positions: they are read from the buffer).
struct StepShape {
  int n_tokens = 0;
  std::vector<int32_t> logit_rows;
  std::vector<kv::KvBatchView> views;  // per plan device; empty views where no layer runs

  bool operator==(const StepShape& o) const {
    if (n_tokens != o.n_tokens || logit_rows != o.logit_rows || views.size() != o.views.size())
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

struct OpenClModel::DeviceCtx {
  int index = 0;  // in the plan
  const Device* dev = nullptr;
  std::unique_ptr<ops::MatmulOp> mm;
  std::unique_ptr<ops::NormOps> norm;
  std::unique_ptr<ops::RopeOps> rope;
  std::unique_ptr<ops::ActivationOps> act;
  std::unique_ptr<ops::RoutingOps> route;
  std::unique_ptr<ops::ElementwiseOps> ew;
  std::unique_ptr<ops::EmbeddingOps> embed;
  std::unique_ptr<ops::MoeOps> moe;
  std::unique_ptr<ops::AttentionOp> attn;
  std::unique_ptr<kv::KvBatchBuffers> batch;
  kv::KvBatchView view;
  ClMem rope_freqs;  // the model's rope_freqs.weight (n_rot/2 floats), when it has them
  bool has_layers = false;
  // SwiGLU folded into the down projection's loads: each row group recomputes its inputs' SiLU,
  // nearly free on GPUs, a loss on CPUs (there a separate launch computes it once).
  bool fold_swiglu = false;
  // Activations for max_batch_tokens tokens.
  // qkv: a step's projections, one row of q | k | v per token; gu: gate | up rows per expert pair
  // (fused weights) or the gate rows then the up rows (separate weights).
  ClMem x, xn, q, qkv, att, gu, h, y, partial, router, topk_ids, topk_w, tokens, logits, workspace;
  size_t workspace_bytes = 0;
  // Constant index buffers: iota [0, max_pairs) and pair -> token (i / k) and token -> pairs (t *
  // k).
  ClMem iota, pair_token, token_pairs;
  // Per-step pair lists of the multi-device MoE path.
  // They and xn are regions of one buffer (`stage`, sub-buffers at st_* bytes), so a job's
  // pairs and activations reach a device in one write (each command costs tens of microseconds
  // on PoCL).
  ClMem stage, p_tok, p_exp, p_w, p_off;
  // topk_ids, topk_w and xn follow each other likewise: one read brings the router's choice and
  // the normed activations to the host.
  size_t st_tok = 0, st_exp = 0, st_w = 0, st_off = 0, st_ids = 0, st_wts = 0, st_xn = 0,
         st_bytes = 0;
  std::vector<uint8_t> h_stage;
  std::vector<int32_t> h_tok, h_exp, h_off;
  std::vector<float> h_w, staging;
  // Profiling: each launch's completion event, by op family (only when EngineOptions::profile).
  bool profile = false;
  std::vector<std::pair<const char*, cl_event>> events;
  cl_event* prof(const char* family) {
    // Recorded launches have no events (count_launches records with profiling on too).
    if (!profile || ops::recording_for(*dev)) return nullptr;
    events.emplace_back(family, nullptr);
    return &events.back().second;  // written by the launch before the next prof() call
  }
  // Adds the device time of every recorded event to `seconds` (call after the queue finished).
  void collect(std::map<std::string, double>& seconds) {
    for (auto& [family, ev] : events) {
      if (!ev) continue;
      cl_ulong start = 0, end = 0;
      if (clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_START, sizeof(start), &start, nullptr) ==
              CL_SUCCESS &&
          clGetEventProfilingInfo(ev, CL_PROFILING_COMMAND_END, sizeof(end), &end, nullptr) ==
              CL_SUCCESS &&
          end > start)
        seconds[family] += double(end - start) * 1e-9;
      clReleaseEvent(ev);
    }
    events.clear();
  }
};

struct OpenClModel::LayerWeights {
  // wqkv: q, k and v rows stacked into one matrix (one launch) when they share a format; otherwise
  // wq, wk, wv write the same q | k | v rows. gate_up likewise for the dense FFN.
  ops::DeviceWeight wqkv, wq, wk, wv, wo, gate_up, gate, up, down, router;
  ClMem attn_norm, ffn_norm, q_norm, k_norm;
  struct Shard {
    std::vector<int32_t> experts;  // global ids held by this device, ascending
    std::vector<int32_t> local;    // global id -> local index, -1 when not here
    // gate_up: each expert's gate rows then its up rows (one launch) when both share a format.
    ops::DeviceWeight gate_up, gate, up, down;
  };
  std::vector<Shard> shards;  // per plan device
  bool all_on_home = false;   // every expert on the layer's device, in global order
};

namespace {

ClMem upload_floats(const Device& dev, const std::vector<float>& v) {
  ClMem m = dev.alloc(v.size() * sizeof(float), CL_MEM_READ_ONLY);
  dev.write(m.get(), 0, v.data(), v.size() * sizeof(float));
  return m;
}

uint64_t tensor_bytes(const gguf::TensorInfo* t) {
  return t ? t->n_bytes() : 0;
}

}  // namespace

sched::ModelFootprint footprint_of(const model::ModelSpec& spec, int context_tokens) {
  sched::ModelFootprint f;
  const auto& hp = spec.hp;
  for (const auto& l : spec.layers) {
    sched::ModelFootprint::Layer fl;
    for (auto* t : {l.attn_norm, l.wq, l.wk, l.wv, l.wo, l.q_norm, l.k_norm, l.ffn_norm, l.ffn_gate,
                    l.ffn_up, l.ffn_down, l.router})
      fl.dense_bytes += tensor_bytes(t);
    if (l.is_moe()) {
      fl.n_experts = int(hp.n_expert);
      fl.expert_bytes =
          (tensor_bytes(l.gate_exps) + tensor_bytes(l.up_exps) + tensor_bytes(l.down_exps)) /
          hp.n_expert;
    }
    // Launch counts stay the planner's defaults here: the engine counts them from its recorded
    // step once it is built (OpenClModel::footprint()).
    f.layers.push_back(fl);
  }
  f.embedding_bytes = tensor_bytes(spec.token_embd);
  f.output_bytes = tensor_bytes(spec.output_norm) +
                   (spec.output_tied ? tensor_bytes(spec.token_embd) : tensor_bytes(spec.output));
  f.n_expert_used = int(hp.n_expert_used);
  f.n_embd = int(hp.n_embd);
  f.kv_bytes_per_token = uint64_t(hp.n_layer) * 2 * hp.kv_dim() * 2;  // f16 K and V
  f.context_tokens = context_tokens;
  return f;
}

OpenClModel::OpenClModel(const model::ModelSpec& spec, const DeviceRegistry& registry,
                         sched::Plan plan, const sched::ModelFootprint& footprint,
                         EngineOptions options)
    : spec_(spec), plan_(std::move(plan)), footprint_(footprint), options_(std::move(options)) {
  const auto& hp = spec_.hp;
  if (const char* off = std::getenv("TESSERA_NO_FUSE")) {
    const std::pair<const char*, bool*> switches[] = {{"qkv", &options_.fuse.qkv},
                                                      {"norm_route", &options_.fuse.norm_route},
                                                      {"combine_norm", &options_.fuse.combine_norm},
                                                      {"swiglu", &options_.fuse.swiglu},
                                                      {"flush", &options_.flush_per_layer}};
    std::istringstream list(off);
    for (std::string name; std::getline(list, name, ',');) {
      if (name.empty()) continue;
      bool* flag = nullptr;
      for (auto& [key, f] : switches)
        if (name == key) flag = f;
      if (!flag)
        throw std::invalid_argument("TESSERA_NO_FUSE: unknown fusion '" + name +
                                    "'; known: qkv, norm_route, combine_norm, swiglu, flush");
      *flag = false;
    }
    spdlog::info("TESSERA_NO_FUSE={}: fusions qkv {} norm_route {} combine_norm {} swiglu {}", off,
                 options_.fuse.qkv, options_.fuse.norm_route, options_.fuse.combine_norm,
                 options_.fuse.swiglu);
  }
  if (options_.max_logit_rows <= 0) options_.max_logit_rows = options_.max_sequences;
  options_.max_logit_rows = std::min(options_.max_logit_rows, options_.max_batch_tokens);
  if (options_.max_context <= 0)
    options_.max_context = int(std::min<uint32_t>(hp.n_ctx_train ? hp.n_ctx_train : 4096, 4096));
  const int T = options_.max_batch_tokens;
  const int K = std::max<int>(1, int(hp.n_expert_used));
  routing_.n_expert_used = int(hp.n_expert_used);
  routing_.gating = reference::GatingFunc::kSoftmax;
  routing_.normalize_topk = spec_.arch->normalize_topk;
  routing_.weight_scale = hp.expert_weights_scale;
  const int max_pairs = T * K;

  // Bytes to upload, for the progress display.
  for (const auto& t : spec_.layers.empty() ? std::vector<model::LayerSpec>{} : spec_.layers)
    for (auto* p : {t.attn_norm, t.wq, t.wk, t.wv, t.wo, t.q_norm, t.k_norm, t.ffn_norm, t.ffn_gate,
                    t.ffn_up, t.ffn_down, t.router, t.gate_exps, t.up_exps, t.down_exps})
      total_bytes_ += tensor_bytes(p);
  total_bytes_ += tensor_bytes(spec_.token_embd) * (spec_.output_tied ? 2 : 1) +
                  tensor_bytes(spec_.output_norm) +
                  (spec_.output_tied ? 0 : tensor_bytes(spec_.output));
  auto uploaded = [&](uint64_t bytes) {
    uploaded_bytes_ += bytes;
    if (options_.progress) options_.progress(uploaded_bytes_, total_bytes_);
  };

  // Devices of the plan.
  for (size_t d = 0; d < plan_.devices.size(); ++d) {
    auto c = std::make_unique<DeviceCtx>();
    c->index = int(d);
    c->profile = options_.profile;
    c->fold_swiglu =
        options_.fuse.swiglu && registry.get(plan_.devices[d].id).info().type != DeviceType::kCpu;
    c->dev = &registry.get(plan_.devices[d].id);
    const Device& dev = *c->dev;
    c->mm = std::make_unique<ops::MatmulOp>(dev);
    c->norm = std::make_unique<ops::NormOps>(dev);
    c->rope = std::make_unique<ops::RopeOps>(dev);
    c->act = std::make_unique<ops::ActivationOps>(dev);
    c->route = std::make_unique<ops::RoutingOps>(dev);
    c->ew = std::make_unique<ops::ElementwiseOps>(dev);
    c->embed = std::make_unique<ops::EmbeddingOps>(dev);
    c->moe = std::make_unique<ops::MoeOps>(dev);
    const size_t f = sizeof(float);
    const size_t ff = std::max(hp.n_ff, hp.n_ff_exp);
    c->x = dev.alloc(size_t(T) * hp.n_embd * f);
    {
      // One buffer, sub-buffer regions aligned for any device (4 KiB covers every base-address
      // alignment seen).
      const size_t align = 4096;
      auto region = [&](size_t bytes) {
        const size_t at = c->st_bytes;
        c->st_bytes = ops::round_up(at + bytes, align);
        return at;
      };
      c->st_tok = region(size_t(max_pairs) * 4);
      c->st_exp = region(size_t(max_pairs) * 4);
      c->st_w = region(size_t(max_pairs) * 4);
      c->st_off = region(size_t(T + 1) * 4);
      c->st_ids = region(size_t(max_pairs) * 4);
      c->st_wts = region(size_t(max_pairs) * 4);
      c->st_xn = region(size_t(T) * hp.n_embd * f);
      c->stage = dev.alloc(c->st_bytes);
      auto sub = [&](size_t at, size_t bytes) {
        cl_buffer_region r{at, bytes};
        cl_int err = CL_SUCCESS;
        cl_mem m = clCreateSubBuffer(c->stage.get(), CL_MEM_READ_WRITE,
                                     CL_BUFFER_CREATE_TYPE_REGION, &r, &err);
        if (err != CL_SUCCESS) throw ClError("clCreateSubBuffer", err, dev.info().label());
        return ClMem(m);
      };
      c->p_tok = sub(c->st_tok, size_t(max_pairs) * 4);
      c->p_exp = sub(c->st_exp, size_t(max_pairs) * 4);
      c->p_w = sub(c->st_w, size_t(max_pairs) * 4);
      c->p_off = sub(c->st_off, size_t(T + 1) * 4);
      c->topk_ids = sub(c->st_ids, size_t(max_pairs) * 4);
      c->topk_w = sub(c->st_wts, size_t(max_pairs) * 4);
      c->xn = sub(c->st_xn, size_t(T) * hp.n_embd * f);
      c->h_stage.resize(c->st_bytes);
    }
    c->partial = dev.alloc(size_t(T) * hp.n_embd * f);
    c->y = dev.alloc(size_t(max_pairs) * hp.n_embd * f);
    c->gu = dev.alloc(size_t(max_pairs) * 2 * ff * f);
    c->h = dev.alloc(size_t(max_pairs) * ff * f);
    c->router = dev.alloc(size_t(T) * std::max<uint32_t>(hp.n_expert, 1) * f);
    c->tokens = dev.alloc(size_t(T) * sizeof(int32_t));
    std::vector<int32_t> iota(static_cast<size_t>(max_pairs)),
        pair_token(static_cast<size_t>(max_pairs)), token_pairs(static_cast<size_t>(T + 1));
    std::iota(iota.begin(), iota.end(), 0);
    for (int i = 0; i < max_pairs; ++i) pair_token[size_t(i)] = i / K;
    for (int t = 0; t <= T; ++t) token_pairs[size_t(t)] = t * K;
    c->iota = dev.alloc(iota.size() * 4);
    dev.write(c->iota.get(), 0, iota.data(), iota.size() * 4);
    c->pair_token = dev.alloc(pair_token.size() * 4);
    dev.write(c->pair_token.get(), 0, pair_token.data(), pair_token.size() * 4);
    c->token_pairs = dev.alloc(token_pairs.size() * 4);
    dev.write(c->token_pairs.get(), 0, token_pairs.data(), token_pairs.size() * 4);
    ctxs_.push_back(std::move(c));
  }
  for (int l : plan_.layer_device) ctx(l).has_layers = true;
  ctx(plan_.attention_device).has_layers = true;

  // Attention ops, activations and batch buffers on every device that holds layers.
  ops::AttentionConfig acfg;
  acfg.n_head = int32_t(hp.n_head);
  acfg.n_head_kv = int32_t(hp.n_head_kv);
  acfg.head_dim = int32_t(hp.head_dim);
  acfg.block_size = options_.kv_block_size;
  if (options_.kv_block_size < 1)
    throw std::invalid_argument("kv_block_size " + std::to_string(options_.kv_block_size) +
                                " must be at least 1");
  const int blocks_per_seq =
      (options_.max_context + options_.kv_block_size - 1) / options_.kv_block_size;
  for (auto& c : ctxs_) {
    if (!c->has_layers) continue;
    const Device& dev = *c->dev;
    c->attn = std::make_unique<ops::AttentionOp>(dev, acfg);
    // Block tables as long as the longest sequence's, so the batch layout (and every kernel
    // argument a recorded step took from it) stays the same while sequences grow.
    c->batch = std::make_unique<kv::KvBatchBuffers>(dev, blocks_per_seq, options_.max_sequences,
                                                    options_.max_batch_tokens);
    c->q = dev.alloc(size_t(T) * hp.q_dim() * 4);
    c->att = dev.alloc(size_t(T) * hp.q_dim() * 4);
    c->qkv = dev.alloc(size_t(T) * (hp.q_dim() + 2 * hp.kv_dim()) * 4);
    c->workspace_bytes = c->attn->decode_workspace_bytes(options_.max_sequences,
                                                         blocks_per_seq * options_.kv_block_size);
    c->workspace = dev.alloc(c->workspace_bytes);
    if (spec_.rope_freqs) c->rope_freqs = upload_floats(dev, model::to_floats(*spec_.rope_freqs));
  }

  // Weights.
  DeviceCtx& home = ctx(plan_.attention_device);
  auto matrix = [&](DeviceCtx& c, const gguf::TensorInfo* t) {
    ops::DeviceWeight w = c.mm->upload(t->type, int64_t(t->dims[1]), int64_t(t->dims[0]), t->data);
    uploaded(t->n_bytes());
    return w;
  };
  // Matrices of one format and width stacked row-wise (ggml rows are contiguous byte ranges).
  auto stacked = [&](DeviceCtx& c, std::initializer_list<const gguf::TensorInfo*> ts) {
    std::vector<uint8_t> bytes;
    int64_t rows = 0;
    for (const auto* t : ts) {
      bytes.insert(bytes.end(), t->data, t->data + t->n_bytes());
      rows += int64_t(t->dims[1]);
    }
    const auto* first = *ts.begin();
    ops::DeviceWeight w = c.mm->upload(first->type, rows, int64_t(first->dims[0]), bytes.data());
    uploaded(bytes.size());
    return w;
  };
  auto stackable = [](std::initializer_list<const gguf::TensorInfo*> ts) {
    const auto* first = *ts.begin();
    for (const auto* t : ts)
      if (!t || t->type != first->type || t->dims[0] != first->dims[0]) return false;
    return true;
  };
  auto norm_weights = [&](DeviceCtx& c, const gguf::TensorInfo* t) {
    if (!t) return ClMem();
    ClMem m = upload_floats(*c.dev, model::to_floats(*t));
    uploaded(t->n_bytes());
    return m;
  };
  // The embedding table stays in its ggml format (rows looked up per token).
  embd_table_ = home.dev->alloc(spec_.token_embd->n_bytes(), CL_MEM_READ_ONLY);
  home.dev->write(embd_table_.get(), 0, spec_.token_embd->data, spec_.token_embd->n_bytes());
  uploaded(spec_.token_embd->n_bytes());
  output_norm_ = norm_weights(home, spec_.output_norm);
  output_ = matrix(home, spec_.output_tied ? spec_.token_embd : spec_.output);
  home.logits = home.dev->alloc(size_t(options_.max_logit_rows) * hp.n_vocab * 4);

  for (size_t l = 0; l < spec_.layers.size(); ++l) {
    const auto& ls = spec_.layers[l];
    DeviceCtx& c = ctx(plan_.layer_device[l]);
    auto w = std::make_unique<LayerWeights>();
    w->attn_norm = norm_weights(c, ls.attn_norm);
    w->ffn_norm = norm_weights(c, ls.ffn_norm);
    w->q_norm = norm_weights(c, ls.q_norm);
    w->k_norm = norm_weights(c, ls.k_norm);
    if (options_.fuse.qkv && stackable({ls.wq, ls.wk, ls.wv})) {
      w->wqkv = stacked(c, {ls.wq, ls.wk, ls.wv});
    } else {
      w->wq = matrix(c, ls.wq);
      w->wk = matrix(c, ls.wk);
      w->wv = matrix(c, ls.wv);
    }
    w->wo = matrix(c, ls.wo);
    if (ls.is_moe()) {
      w->router = matrix(c, ls.router);
    } else {
      if (stackable({ls.ffn_gate, ls.ffn_up})) {
        w->gate_up = stacked(c, {ls.ffn_gate, ls.ffn_up});
      } else {
        w->gate = matrix(c, ls.ffn_gate);
        w->up = matrix(c, ls.ffn_up);
      }
      w->down = matrix(c, ls.ffn_down);
    }
    layers_.push_back(std::move(w));
    if (ls.is_moe()) upload_layer_experts(int(l));
  }

  // KV cache: each layer's pools on its device.
  kv::KvCacheConfig kcfg;
  kcfg.n_layer = int32_t(hp.n_layer);
  kcfg.n_head_kv = int32_t(hp.n_head_kv);
  kcfg.head_dim = int32_t(hp.head_dim);
  kcfg.block_size = options_.kv_block_size;
  kcfg.n_blocks =
      options_.kv_blocks > 0
          ? options_.kv_blocks
          : options_.max_sequences *
                ((options_.max_context + options_.kv_block_size - 1) / options_.kv_block_size);
  std::vector<const Device*> layer_devices;
  for (int d : plan_.layer_device) layer_devices.push_back(ctx(d).dev);
  kv_ = std::make_unique<kv::PagedKvCache>(kcfg, layer_devices);

  std::vector<std::string> ids;
  for (const auto& d : plan_.devices) ids.push_back(d.id);
  executor_ = std::make_unique<sched::Executor>(ids);
  count_launches();
  sched::predict(plan_, footprint_);
  balancer_ = std::make_unique<sched::ExpertBalancer>(
      footprint_, options_.balancer && plan_.devices.size() > 1);
  stats_.device_seconds.assign(plan_.devices.size(), 0.0);
  stats_.expert_hits.assign(plan_.devices.size(), 0);
  for (auto& c : ctxs_) c->dev->finish();
}

OpenClModel::~OpenClModel() {
  for (auto& c : ctxs_) {
    try {
      c->dev->finish();
    } catch (const std::exception& e) {
      spdlog::warn("{}: finish at shutdown failed: {}", c->dev->id(), e.what());
    }
  }
}

void OpenClModel::upload_layer_experts(int layer) {
  const auto& ls = spec_.layers[size_t(layer)];
  const auto& hp = spec_.hp;
  auto& w = *layers_[size_t(layer)];
  const auto& assign = plan_.expert_device[size_t(layer)];
  w.shards.clear();
  w.shards.resize(plan_.devices.size());
  for (size_t d = 0; d < plan_.devices.size(); ++d) {
    auto& s = w.shards[d];
    s.local.assign(hp.n_expert, -1);
    for (uint32_t e = 0; e < hp.n_expert; ++e)
      if (assign[e] == int(d)) {
        s.local[e] = int32_t(s.experts.size());
        s.experts.push_back(int32_t(e));
      }
    if (s.experts.empty()) continue;
    DeviceCtx& c = ctx(int(d));
    // Experts are the outermost ggml dimension: expert e's bytes are one contiguous range. With
    // two tensors (gate and up of one format), each expert's rows of the first then the second.
    auto slice = [&](const gguf::TensorInfo* t, const gguf::TensorInfo* t2 = nullptr) {
      const int64_t cols = int64_t(t->dims[0]), rows = int64_t(t->dims[1]) * (t2 ? 2 : 1);
      const uint64_t per = t->n_bytes() / hp.n_expert, step = t2 ? 2 * per : per;
      std::vector<uint8_t> bytes(step * s.experts.size());
      for (size_t i = 0; i < s.experts.size(); ++i) {
        std::memcpy(bytes.data() + i * step, t->data + uint64_t(s.experts[i]) * per, per);
        if (t2)
          std::memcpy(bytes.data() + i * step + per, t2->data + uint64_t(s.experts[i]) * per, per);
      }
      ops::DeviceWeight dw =
          c.mm->upload(t->type, rows, cols, bytes.data(), int64_t(s.experts.size()));
      uploaded_bytes_ += bytes.size();
      if (options_.progress)
        options_.progress(uploaded_bytes_, std::max(total_bytes_, uploaded_bytes_));
      return dw;
    };
    if (ls.gate_exps->type == ls.up_exps->type && ls.gate_exps->dims[0] == ls.up_exps->dims[0] &&
        ls.gate_exps->dims[1] == ls.up_exps->dims[1]) {
      s.gate_up = slice(ls.gate_exps, ls.up_exps);
    } else {
      s.gate = slice(ls.gate_exps);
      s.up = slice(ls.up_exps);
    }
    s.down = slice(ls.down_exps);
    if (s.gate_up.body && c.fold_swiglu) c.mm->prepare_swiglu(ls.down_exps->type);
  }
  const int home = plan_.layer_device[size_t(layer)];
  w.all_on_home = int(w.shards[size_t(home)].experts.size()) == int(hp.n_expert);
}

void OpenClModel::copy_between(DeviceCtx& from, cl_mem src, size_t src_off, DeviceCtx& to,
                               cl_mem dst, size_t dst_off, size_t bytes) {
  if (&from == &to) {
    ops::copy_buffer(*from.dev, src, src_off, dst, dst_off, bytes);
    return;
  }
  if (from.dev->context() == to.dev->context()) {
    // Devices of one context: a device-side copy on the receiver's queue, ordered after the
    // sender's queued work by an event; the host does not wait.
    ops::copy_after(*from.dev, *to.dev, src, src_off, dst, dst_off, bytes);
    return;
  }
  // Different platforms: through host memory, a point where the host waits for the sender.
  ops::host_sync(*from.dev, "copy through the host",
                 [&from, &to, src, src_off, dst, dst_off, bytes] {
                   auto& staging = to.staging;
                   staging.resize((bytes + 3) / 4);
                   from.dev->read(src, src_off, staging.data(), bytes, true);
                   to.dev->write(dst, dst_off, staging.data(), bytes, true);
                 });
}

void OpenClModel::expert_ffn(DeviceCtx& c, const LayerWeights& w, int device, cl_mem pair_token,
                             cl_mem pair_expert, int x_rows, int np) {
  const auto& s = w.shards[size_t(device)];
  const uint32_t ff = spec_.hp.n_ff_exp;
  // Folding pays for a few pairs (decode); with many (prefill) every row group recomputing its
  // inputs' SiLU costs more than the launch it saves.
  if (s.gate_up.body) {
    // One launch for gate and up: pair row p holds gate (ff) then up (ff).
    c.mm->run_experts(s.gate_up, c.xn.get(), 0, x_rows, c.gu.get(), 0, pair_token, pair_expert, np,
                      {}, c.prof("matmul"));
    if (c.fold_swiglu && np <= kFoldSwigluMaxPairs) {
      // Down with SwiGLU folded into its loads of those rows.
      c.mm->run_experts(s.down, c.gu.get(), 0, np, c.y.get(), 0, c.iota.get(), pair_expert, np, {},
                        c.prof("matmul"), true);
      return;
    }
    c.act->swiglu({c.gu.get(), 0, 2 * ff}, {c.gu.get(), ff, 2 * ff}, {c.h.get(), 0, ff},
                  uint32_t(np), ff, {{}, c.prof("activation")});
  } else {
    const uint32_t up_off = uint32_t(np) * ff;
    c.mm->run_experts(s.gate, c.xn.get(), 0, x_rows, c.gu.get(), 0, pair_token, pair_expert, np, {},
                      c.prof("matmul"));
    c.mm->run_experts(s.up, c.xn.get(), 0, x_rows, c.gu.get(), up_off, pair_token, pair_expert, np,
                      {}, c.prof("matmul"));
    c.act->swiglu({c.gu.get(), 0, ff}, {c.gu.get(), up_off, ff}, {c.h.get(), 0, ff}, uint32_t(np),
                  ff, {{}, c.prof("activation")});
  }
  c.mm->run_experts(s.down, c.h.get(), 0, np, c.y.get(), 0, c.iota.get(), pair_expert, np, {},
                    c.prof("matmul"));
}

bool OpenClModel::moe_layer(int layer, DeviceCtx& home, int n, bool routed, cl_mem next_norm) {
  const auto& hp = spec_.hp;
  auto& w = *layers_[size_t(layer)];
  const int K = int(hp.n_expert_used);
  const int pairs = n * K;
  if (!routed) {
    home.mm->run(w.router, home.xn.get(), 0, home.router.get(), 0, n, {}, home.prof("matmul"));
    home.route->route(home.router.get(), 0, uint32_t(n), hp.n_expert, routing_, home.topk_ids.get(),
                      0, home.topk_w.get(), 0, {{}, home.prof("routing")});
  }
  if (w.all_on_home) {
    // Every expert here: no host round trip. Pair i = (token i / K, expert topk_ids[i]). The
    // balancer's counts come from a non-blocking copy of the choice, read after the step.
    if (balancer_ && balancer_->enabled()) {  // no balancer yet while counting launches
      auto& pending = pending_choices_.emplace_back();
      pending.layer = layer;
      pending.ids.resize(size_t(pairs));
      home.dev->read(home.topk_ids.get(), 0, pending.ids.data(), size_t(pairs) * 4, false);
    }
    expert_ffn(home, w, home.index, home.pair_token.get(), home.topk_ids.get(), n, pairs);
    ops::host_call(*home.dev, "count expert hits", [this, d = size_t(home.index), pairs] {
      stats_.expert_hits[d] += uint64_t(pairs);
    });
    if (next_norm) {
      home.moe->combine_norm(home.x.get(), 0, home.y.get(), 0, home.topk_w.get(), 0,
                             home.token_pairs.get(), uint32_t(n), hp.n_embd, next_norm, hp.rms_eps,
                             home.xn.get(), 0, {{}, home.prof("moe_combine")});
      return true;
    }
    home.moe->combine(home.x.get(), 0, home.y.get(), 0, home.topk_w.get(), 0,
                      home.token_pairs.get(), nullptr, uint32_t(n), hp.n_embd, true,
                      {{}, home.prof("moe_combine")});
    return false;
  }

  // Experts on several devices: the router's choice comes to the host (a few bytes per token), each
  // device gets the pairs of its experts, and the devices run them concurrently. In a step program
  // this is a host-sync point: the program is split here and the rest of the layer runs from the
  // host each time.
  ops::host_sync(*home.dev, "route tokens to expert devices",
                 [this, layer, &home, n] { moe_layer_across_devices(layer, home, n); });
  return false;
}

void OpenClModel::moe_layer_across_devices(int layer, DeviceCtx& home, int n) {
  const auto& hp = spec_.hp;
  auto& w = *layers_[size_t(layer)];
  const int K = int(hp.n_expert_used);
  const int pairs = n * K;
  // One read: ids, weights and (when a device of another context takes experts) the normed
  // activations.
  bool any_foreign = false;
  for (size_t d = 0; d < ctxs_.size(); ++d)
    any_foreign |= &home != ctxs_[d].get() && !w.shards[d].experts.empty() &&
                   ctxs_[d]->dev->context() != home.dev->context();
  {
    const size_t end =
        any_foreign ? home.st_xn + size_t(n) * hp.n_embd * 4 : home.st_wts + size_t(pairs) * 4;
    home.dev->read(home.stage.get(), home.st_ids, home.h_stage.data() + home.st_ids,
                   end - home.st_ids, true);
  }
  const int32_t* ids = reinterpret_cast<const int32_t*>(home.h_stage.data() + home.st_ids);
  const float* wts = reinterpret_cast<const float*>(home.h_stage.data() + home.st_wts);
  xn_src_ = reinterpret_cast<const float*>(home.h_stage.data() + home.st_xn);
  for (int t = 0; t < n; ++t) balancer_->record(layer, ids + size_t(t) * K, K);

  std::vector<std::function<void()>> jobs(ctxs_.size());
  std::vector<int> remote;
  lane_seconds_.assign(ctxs_.size(), 0.0);
  for (size_t d = 0; d < ctxs_.size(); ++d) {
    auto& s = w.shards[d];
    if (s.experts.empty()) continue;
    DeviceCtx& c = *ctxs_[d];
    c.h_tok.clear();
    c.h_exp.clear();
    c.h_w.clear();
    c.h_off.assign(1, 0);
    for (int t = 0; t < n; ++t) {
      for (int j = 0; j < K; ++j) {
        const int32_t e = ids[size_t(t * K + j)];
        if (e < 0 || uint32_t(e) >= hp.n_expert)
          throw std::runtime_error("layer " + std::to_string(layer) + ": router chose expert " +
                                   std::to_string(e));
        if (s.local[size_t(e)] < 0) continue;
        c.h_tok.push_back(t);
        c.h_exp.push_back(s.local[size_t(e)]);
        c.h_w.push_back(wts[size_t(t * K + j)]);
      }
      c.h_off.push_back(int32_t(c.h_tok.size()));
    }
    const int np = int(c.h_tok.size());
    if (np == 0) continue;
    stats_.expert_hits[d] += uint64_t(np);
    const bool is_home = &c == &home;
    if (!is_home) remote.push_back(int(d));
    jobs[d] = [this, &c, &w, d, &home, n, np, is_home] {
      const auto t0 = Clock::now();
      const auto& hp2 = spec_.hp;
      // Pairs (and, off the home device, the normed activations) in one write of the stage.
      uint8_t* st = c.h_stage.data();
      std::memcpy(st + c.st_tok, c.h_tok.data(), size_t(np) * 4);
      std::memcpy(st + c.st_exp, c.h_exp.data(), size_t(np) * 4);
      std::memcpy(st + c.st_w, c.h_w.data(), size_t(np) * 4);
      std::memcpy(st + c.st_off, c.h_off.data(), c.h_off.size() * 4);
      size_t end = c.st_off + c.h_off.size() * 4;
      const bool shared = !is_home && c.dev->context() == home.dev->context();
      if (!is_home && !shared) {
        std::memcpy(st + c.st_xn, xn_src_, size_t(n) * hp2.n_embd * 4);
        end = c.st_xn + size_t(n) * hp2.n_embd * 4;
      }
      c.dev->write(c.stage.get(), 0, st, end, false);
      // Same context: the activations move device to device, after the home queue's work.
      if (shared)
        ops::copy_after(*home.dev, *c.dev, home.xn.get(), 0, c.xn.get(), 0,
                        size_t(n) * hp2.n_embd * 4);
      expert_ffn(c, w, int(d), c.p_tok.get(), c.p_exp.get(), n, np);
      // Home accumulates into the residual stream; others produce a partial sum to send back.
      c.moe->combine(is_home ? c.x.get() : c.partial.get(), 0, c.y.get(), 0, c.p_w.get(), 0,
                     c.p_off.get(), nullptr, uint32_t(n), hp2.n_embd, is_home,
                     {{}, c.prof("moe_combine")});
      if (!is_home && !shared) {
        c.staging.resize(size_t(n) * hp2.n_embd);
        c.dev->read(c.partial.get(), 0, c.staging.data(), c.staging.size() * 4, true);
      } else {
        c.dev->finish();  // for the lane's device time; the data stays on the device
      }
      lane_seconds_[size_t(c.index)] = std::chrono::duration<double>(Clock::now() - t0).count();
    };
  }
  executor_->run_all(jobs);
  for (size_t d = 0; d < ctxs_.size(); ++d) {
    stats_.device_seconds[d] += lane_seconds_[d];
    balancer_->record_device_seconds(int(d), lane_seconds_[d]);
  }
  for (int d : remote) {
    DeviceCtx& c = ctx(d);
    if (c.dev->context() == home.dev->context())
      ops::copy_after(*c.dev, *home.dev, c.partial.get(), 0, home.partial.get(), 0,
                      size_t(n) * hp.n_embd * 4);
    else
      home.dev->write(home.partial.get(), 0, c.staging.data(), size_t(n) * hp.n_embd * 4, true);
    home.ew->add(home.x.get(), 0, home.partial.get(), 0, home.x.get(), 0, uint32_t(n) * hp.n_embd,
                 {{}, home.prof("elementwise")});
  }
}

std::vector<float> OpenClModel::forward(const StepBatch& b) {
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

  const auto t_start = Clock::now();
  DeviceCtx& home = ctx(plan_.attention_device);
  // The batch (block tables, positions, slots) on every device that holds layers.
  for (auto& c : ctxs_)
    if (c->has_layers) c->view = c->batch->upload(kv_->blocks(), b.seqs, b.token_seq, b.token_pos);
  // Decode kernel when every sequence contributes exactly one token; the prefill kernel otherwise.
  const bool decode = size_t(n) == b.seqs.size();

  home.dev->write(home.tokens.get(), 0, b.tokens.data(), size_t(n) * 4, false);

  // A step of a shape seen before replays its recorded program: everything that differs between
  // its steps (tokens, block tables, positions, slots, longest context) was just written to device
  // buffers. Profiling (events per launch) and the balancer (a copy of each choice per step, moved
  // experts) enqueue afresh.
  if (options_.replay && !options_.profile && !balancer_->enabled()) {
    StepShape shape;
    shape.n_tokens = n;
    shape.logit_rows = b.logit_rows;
    for (auto& c : ctxs_) shape.views.push_back(c->has_layers ? c->view : kv::KvBatchView{});
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
    }
    programs_.back()->program.run();
  } else {
    enqueue_step(b, n, decode);
  }
  std::vector<float> logits(b.logit_rows.size() * hp.n_vocab);
  if (!b.logit_rows.empty()) {
    home.dev->read(home.logits.get(), 0, logits.data(), logits.size() * 4, true);
  } else {
    home.dev->finish();
  }
  for (auto& c : ctxs_)
    if (c.get() != &home && c->has_layers) c->dev->finish();

  for (auto& c : ctxs_) c->collect(stats_.device_op_seconds);
  ++stats_.steps;
  // Queues have finished: the balancer's counts of layers routed without a round trip.
  for (const auto& p : pending_choices_) {
    const int K = int(hp.n_expert_used);
    for (size_t t = 0; t * size_t(K) < p.ids.size(); ++t)
      balancer_->record(p.layer, p.ids.data() + t * size_t(K), K);
  }
  pending_choices_.clear();
  balancer_->end_step();
  if (balancer_->enabled()) {
    const auto moves = balancer_->rebalance(plan_);
    std::vector<bool> touched(spec_.layers.size(), false);
    for (const auto& m : moves) touched[size_t(m.layer)] = true;
    for (size_t l = 0; l < touched.size(); ++l)
      if (touched[l]) upload_layer_experts(int(l));
    stats_.balancer_moves = balancer_->moves();
  }
  stats_.op_seconds[decode ? "decode" : "prefill"] +=
      std::chrono::duration<double>(Clock::now() - t_start).count();
  return logits;
}

const ops::StepProgram* OpenClModel::latest_program() const {
  return programs_.empty() ? nullptr : &programs_.back()->program;
}

void OpenClModel::enqueue_step(const StepBatch& b, int n, bool decode) {
  const auto& hp = spec_.hp;
  DeviceCtx& home = ctx(plan_.attention_device);
  const ops::DeviceTable table{embd_table_.get(), 0, spec_.token_embd->type, hp.n_embd, hp.n_vocab};
  home.embed->lookup(table, home.tokens.get(), 0, uint32_t(n), home.x.get(), 0,
                     {{}, home.prof("embedding")});
  auto mark = [&] {
    if (step_marks_) step_marks_->push_back(ops::recording_for(*home.dev)->launches());
  };
  mark();

  DeviceCtx* cur = &home;
  const uint32_t E = hp.n_embd;
  bool prenormed = false;  // xn already holds this layer's attention-normed input
  for (size_t l = 0; l < spec_.layers.size(); ++l) {
    DeviceCtx& c = ctx(plan_.layer_device[l]);
    if (&c != cur) {
      copy_between(*cur, cur->x.get(), 0, c, c.x.get(), 0, size_t(n) * E * 4);
      cur = &c;
    }
    auto& w = *layers_[l];
    const auto& ls = spec_.layers[l];
    if (!prenormed)
      c.norm->rms_norm(c.x.get(), 0, w.attn_norm.get(), 0, c.xn.get(), 0, uint32_t(n), E,
                       hp.rms_eps, {{}, c.prof("norm")});
    prenormed = false;
    // Projections into one q | k | v row per token, then norms, RoPE and the KV store in one
    // launch.
    const uint32_t q_dim = hp.q_dim(), kv_dim = hp.kv_dim(), qkv_ld = q_dim + 2 * kv_dim;
    if (w.wqkv.body) {
      c.mm->run(w.wqkv, c.xn.get(), 0, c.qkv.get(), 0, n, {}, c.prof("matmul"));
    } else {
      c.mm->run(w.wq, c.xn.get(), 0, c.qkv.get(), 0, n, {}, c.prof("matmul"), {qkv_ld});
      c.mm->run(w.wk, c.xn.get(), 0, c.qkv.get(), q_dim, n, {}, c.prof("matmul"), {qkv_ld});
      c.mm->run(w.wv, c.xn.get(), 0, c.qkv.get(), q_dim + kv_dim, n, {}, c.prof("matmul"),
                {qkv_ld});
    }
    const auto layer_view = kv_->layer(int32_t(l));
    c.attn->qkv_finish(
        c.view, layer_view, {c.qkv.get(), 0, qkv_ld, q_dim, q_dim + kv_dim},
        ls.q_norm ? w.q_norm.get() : nullptr, ls.q_norm ? w.k_norm.get() : nullptr, hp.rms_eps,
        {hp.n_rot, hp.rope_freq_base, spec_.arch->rope_mode == reference::RopeMode::kNeox,
         hp.rope_freq_scale, c.rope_freqs.get()},
        c.q.get(), 0, 0, n, {{}, c.prof("qkv_finish")});
    if (decode) {
      c.attn->decode(c.view, layer_view, c.q.get(), 0, c.att.get(), 0, 0, n, c.workspace.get(),
                     c.workspace_bytes, {{}, c.prof("attention")});
    } else {
      c.attn->prefill(c.view, layer_view, c.q.get(), 0, c.att.get(), 0, 0, n,
                      {{}, c.prof("attention")});
    }
    // Output projection added to the residual stream in the same launch.
    c.mm->run(w.wo, c.att.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
    // Submit what is queued: some drivers (NVIDIA's) hold commands until a flush or a wait, so
    // without this the device would idle while the host enqueues the whole step.
    if (options_.flush_per_layer) ops::flush(*c.dev);
    // MoE with an F32 router: the FFN norm, router and top-k in one launch.
    const bool fused_route = options_.fuse.norm_route && ls.is_moe() &&
                             w.router.type == gguf::TensorType::F32 &&
                             c.route->can_norm_route(E, hp.n_expert);
    if (fused_route) {
      c.route->norm_route(c.x.get(), 0, w.ffn_norm.get(), hp.rms_eps, E, c.xn.get(), 0,
                          w.router.body.get(), uint32_t(w.router.blocks_per_row * 32), uint32_t(n),
                          hp.n_expert, routing_, c.topk_ids.get(), 0, c.topk_w.get(), 0,
                          {{}, c.prof("routing")});
    } else {
      c.norm->rms_norm(c.x.get(), 0, w.ffn_norm.get(), 0, c.xn.get(), 0, uint32_t(n), E, hp.rms_eps,
                       {{}, c.prof("norm")});
    }
    if (ls.is_moe()) {
      const bool next_here = options_.fuse.combine_norm && l + 1 < spec_.layers.size() &&
                             &ctx(plan_.layer_device[l + 1]) == &c;
      prenormed = moe_layer(int(l), c, n, fused_route,
                            next_here ? layers_[l + 1]->attn_norm.get() : nullptr);
    } else {
      const uint32_t ff = hp.n_ff;
      if (w.gate_up.body) {
        c.mm->run(w.gate_up, c.xn.get(), 0, c.gu.get(), 0, n, {}, c.prof("matmul"));
      } else {
        c.mm->run(w.gate, c.xn.get(), 0, c.gu.get(), 0, n, {}, c.prof("matmul"), {2 * ff});
        c.mm->run(w.up, c.xn.get(), 0, c.gu.get(), ff, n, {}, c.prof("matmul"), {2 * ff});
      }
      c.act->swiglu({c.gu.get(), 0, 2 * ff}, {c.gu.get(), ff, 2 * ff}, {c.h.get(), 0, ff},
                    uint32_t(n), ff, {{}, c.prof("activation")});
      c.mm->run(w.down, c.h.get(), 0, c.x.get(), 0, n, {}, c.prof("matmul"), {0, true});
    }
    mark();
  }
  if (cur != &home) copy_between(*cur, cur->x.get(), 0, home, home.x.get(), 0, size_t(n) * E * 4);

  // Logits of the requested rows only.
  const bool consecutive =
      std::adjacent_find(b.logit_rows.begin(), b.logit_rows.end(),
                         [](int32_t a, int32_t c) { return c != a + 1; }) == b.logit_rows.end();
  if (consecutive && !b.logit_rows.empty()) {
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
  mark();
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
    if (!c->has_layers) continue;
    c->view = kv::KvBatchView{};
    c->view.meta = c->tokens.get();
    c->view.n_seqs = 1;
    c->view.n_tokens = 1;
    c->view.max_context = 1;
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
  const size_t L = spec_.layers.size();
  if (marks.size() != L + 2) throw std::logic_error("count_launches: step boundaries missing");
  footprint_.embedding_launches = int(marks[0]);
  footprint_.output_launches = int(marks[L + 1] - marks[L]);
  const int K = int(hp.n_expert_used);
  for (size_t l = 0; l < L; ++l) {
    auto& fl = footprint_.layers[l];
    int layer_launches = int(marks[l + 1] - marks[l]);
    fl.expert_launches = 0;
    if (spec_.layers[l].is_moe()) {
      // A device's share of the layer's experts for one token (its K pairs): gate|up, SwiGLU
      // (unless folded), down, combine; counted on a device that holds some.
      const auto& w = *layers_[l];
      size_t d = 0;
      while (w.shards[d].experts.empty()) ++d;
      DeviceCtx& c = ctx(int(d));
      ops::StepProgram experts(ops::StepProgram::Mode::kCountOnly);
      {
        const Device* one[] = {c.dev};
        ops::Recording recording(experts, one);
        expert_ffn(c, w, int(d), c.pair_token.get(), c.topk_ids.get(), 1, K);
        c.moe->combine(c.x.get(), 0, c.y.get(), 0, c.topk_w.get(), 0, c.token_pairs.get(), nullptr,
                       1, hp.n_embd, true, {});
      }
      fl.expert_launches = int(experts.launches());
      // Experts all on the layer's device run inside the step; otherwise from its host sync.
      if (w.all_on_home) layer_launches -= fl.expert_launches;
    }
    fl.dense_launches = layer_launches;
  }
}

}  // namespace tessera::engine
