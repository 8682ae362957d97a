// The MoE FFN on the device (norm + routing, expert GEMMs over (token, expert) pairs, combine) on
// one device or across several, and its scalar reference.
#include "host/engine/layers/moe_ffn.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include <spdlog/spdlog.h>

#include "host/model/weights.h"
#include "host/ops/device/step_program.h"
#include "host/ops/reference/norm.h"

namespace tessera::engine {

using Clock = std::chrono::steady_clock;

namespace {
// Folding SwiGLU into the down projection pays for a few pairs (decode); with many (prefill) every
// row group recomputing its inputs' SiLU costs more than the launch it saves.
constexpr int kFoldSwigluMaxPairs = 64;
// Steps of at least this many tokens group their pairs by expert before the expert matmuls (one
// launch more; below it, pairs per expert are too few for its tiles to share weight decoding).
constexpr int kGroupPairsMinTokens = 16;
// Streamed experts without device figures to decide by: llama.cpp's batch size for the same move.
constexpr int kStreamDefaultMinTokens = 32;

// The bytes of `experts` (global ids, in that order) of an expert tensor: experts are ggml's
// outermost dimension, so expert e's bytes are one contiguous range. With t2 (up beside gate, one
// format), each expert's rows of t then its rows of t2.
std::vector<uint8_t> expert_bytes(const gguf::TensorInfo* t, const gguf::TensorInfo* t2,
                                  uint32_t n_expert, std::span<const int32_t> experts) {
  const uint64_t per = t->n_bytes() / n_expert, step = t2 ? 2 * per : per;
  std::vector<uint8_t> bytes(step * experts.size());
  for (size_t i = 0; i < experts.size(); ++i) {
    std::memcpy(bytes.data() + i * step, t->data + uint64_t(experts[i]) * per, per);
    if (t2) std::memcpy(bytes.data() + i * step + per, t2->data + uint64_t(experts[i]) * per, per);
  }
  return bytes;
}

// Gate and up in one weight (each expert's gate rows then its up rows): same format and shape.
bool gate_up_together(const gguf::TensorInfo* g, const gguf::TensorInfo* u) {
  return g->type == u->type && g->dims[0] == u->dims[0] && g->dims[1] == u->dims[1];
}
}  // namespace

reference::RoutingConfig routing_config(const model::ModelSpec& spec) {
  reference::RoutingConfig r;
  r.n_expert_used = int(spec.hp.n_expert_used);
  r.gating = reference::GatingFunc::kSoftmax;
  r.normalize_topk = spec.arch->normalize_topk;
  r.weight_scale = spec.hp.expert_weights_scale;
  return r;
}

void MoeRuntime::begin_step() {
  for (auto& [layer, written] : stream_writes)
    CL_CHECK(clWaitForEvents(1, written.ptr()), "layer " + std::to_string(layer));
  stream_writes.clear();
}

void MoeRuntime::end_step(int experts_per_token, size_t count) {
  count = std::min(count, pending_choices.size());
  for (size_t i = 0; i < count; ++i) {
    const auto& p = pending_choices[i];
    for (size_t t = 0; t * size_t(experts_per_token) < p.count; ++t)
      balancer->record(p.layer, p.ids + t * size_t(experts_per_token), experts_per_token);
  }
  pending_choices.erase(pending_choices.begin(), pending_choices.begin() + ptrdiff_t(count));
}

int32_t* MoeRuntime::choice_place(int d, int layer) const {
  if (size_t(d) >= choice_memory.size() || !choice_memory[size_t(d)]) return nullptr;
  auto* base = reinterpret_cast<int32_t*>(choice_memory[size_t(d)]->data());
  return base + (size_t(choice_slot) * size_t(choice_layers) + size_t(layer)) * choice_ints;
}

MoeFfn::MoeFfn(const model::ModelSpec& spec, int layer, MoeRuntime* moe)
    : spec_(spec),
      ls_(spec.layers[size_t(layer)]),
      layer_(layer),
      moe_(moe),
      routing_(routing_config(spec)),
      ref_ffn_norm_(model::to_floats(*ls_.ffn_norm)),
      ref_{model::as_matrix(*ls_.router), model::as_experts(*ls_.gate_exps),
           model::as_experts(*ls_.up_exps), model::as_experts(*ls_.down_exps), std::nullopt} {
  if (ls_.router_b) {
    ref_.router_b = model::to_floats(*ls_.router_b);
    ref_.gate_b = model::to_floats(*ls_.gate_exps_b);
    ref_.up_b = model::to_floats(*ls_.up_exps_b);
    ref_.down_b = model::to_floats(*ls_.down_exps_b);
  }
  ref_.swiglu_oai = spec.arch->activation == model::FfnActivation::kSwigluOai;
  device_routing_ = routing_;
  if (spec.hp.residual_scale != 1.0f)
    device_routing_.weight_scale =
        (routing_.weight_scale == 0.0f ? 1.0f : routing_.weight_scale) * spec.hp.residual_scale;
}

void MoeFfn::upload(DeviceCtx& c, WeightUploader& up, const EngineOptions& options) {
  if (!moe_) throw std::logic_error("MoeFfn::upload: built for the reference path only");
  dev_.home = c.index;
  dev_.ffn_norm = up.norm(c, ls_.ffn_norm);
  dev_.router = up.matrix(c, ls_.router);
  if (ls_.router_b) {
    dev_.router_b = c.dev->alloc(ref_.router_b.size() * sizeof(float), CL_MEM_READ_ONLY);
    c.dev->write(dev_.router_b.get(), 0, ref_.router_b.data(),
                 ref_.router_b.size() * sizeof(float));
    up.count(ls_.router_b->n_bytes());
  }
  // Streamed experts (big steps of a layer with experts elsewhere): not with expert biases; kAuto
  // not onto a CPU (it would compute them no faster than the device holding them).
  using SE = EngineOptions::StreamExperts;
  stream_wanted_ =
      moe_->devices->size() > 1 &&
      (options.stream_experts == SE::kOn ||
       (options.stream_experts == SE::kAuto && c.dev->info().type != DeviceType::kCpu)) &&
      !ls_.router_b;
  stream_ahead_ = options.stream_ahead;
  stream_queue_ = options.stream_queue;
  if (stream_wanted_) {
    stream_min_tokens_ = options.stream_experts_min_tokens > 0 ? options.stream_experts_min_tokens
                                                               : stream_break_even(c.index);
    stream_wanted_ = stream_min_tokens_ <= options.max_batch_tokens;
  }
  upload_experts(up);
  // The attention's output projection (same device) may run the norm and routing in its launch.
  const auto& hp = spec_.hp;
  dev_.route_tail = options.fuse.norm_route && options.fuse.proj_route && !dev_.router_b &&
                    dev_.router.type == gguf::TensorType::F32 && ls_.wo && !ls_.bo &&
                    c.mm->can_route_tail(ls_.wo->type, hp.n_expert);
  if (dev_.route_tail) {
    try {
      c.mm->prepare_route_tail(ls_.wo->type, int64_t(hp.n_embd), hp.n_expert);
    } catch (const std::exception& e) {
      // A driver that cannot build or hold the fused program: the separate routing launch runs.
      spdlog::warn(
          "{}: layer {}: routing in the output projection unavailable ({}); routing "
          "runs as its own launch",
          c.dev->id(), layer_, e.what());
      dev_.route_tail = false;
    }
  }
  // The experts in that launch too, for one-token steps with every expert here.
  const Shard& own = dev_.shards[size_t(dev_.home)];
  dev_.route_ffn =
      dev_.route_tail && options.fuse.route_ffn && dev_.all_on_home && own.in_route &&
      (own.ffn || options.fuse.route_ffn_gpu) &&
      c.mm->can_route_ffn(ls_.wo->type, int64_t(ls_.wo->dims[1]), int64_t(ls_.wo->dims[0]),
                          hp.n_expert, own.gate_up, own.down);
  if (dev_.route_ffn) {
    try {
      c.mm->prepare_route_ffn(ls_.wo->type, int64_t(ls_.wo->dims[1]), int64_t(ls_.wo->dims[0]),
                              hp.n_expert, own.gate_up, own.down);
    } catch (const std::exception& e) {
      spdlog::warn(
          "{}: layer {}: experts in the output projection's launch unavailable ({}); they run "
          "as their own launch",
          c.dev->id(), layer_, e.what());
      dev_.route_ffn = false;
    }
  }
}

const ops::RouteTail* MoeFfn::route_tail(const DeviceCtx& c, const LayerStep& s, bool with_experts,
                                         cl_mem next_norm, InputProjection next) {
  if (!dev_.route_tail || c.index != dev_.home || s.n_tokens > ops::MatmulOp::kRouteTailMaxTokens)
    return nullptr;
  auto& r = route_tail_;
  r.ffn = nullptr;
  const Shard& own = dev_.shards[size_t(dev_.home)];
  // (all_on_home and the shard as at the last upload: the balancer may have moved experts since.)
  if (with_experts && dev_.route_ffn && s.n_tokens == 1 && dev_.all_on_home && own.in_route &&
      combines_in_down(own, false, 1)) {
    route_ffn_.gate_up = &own.gate_up;
    route_ffn_.down = &own.down;
    route_ffn_.pair_token = c.pair_token.get();
    route_ffn_.combine = combine_args(c.x.get(), true, c.topk_w.get(), c.token_pairs.get(),
                                      c.pair_token.get(), 1, next_norm, c.xn.get());
    const bool project = next_norm && next.w && next.y &&
                         c.mm->can_route_next(ls_.wo->type, int64_t(ls_.wo->dims[1]), *next.w);
    route_ffn_.next = project ? next.w : nullptr;
    route_ffn_.next_y = project ? next.y : nullptr;
    route_ffn_.attention = project ? next.attention : nullptr;
    r.ffn = &route_ffn_;
  }
  r.norm_w = dev_.ffn_norm.get();
  r.eps = spec_.hp.rms_eps;
  r.xn = c.xn.get();
  r.router = dev_.router.body.get();
  r.router_ld = uint32_t(dev_.router.blocks_per_row * 32);
  r.n_expert = spec_.hp.n_expert;
  r.routing = device_routing_;
  r.ids = c.topk_ids.get();
  r.weights = c.topk_w.get();
  return &r;
}

void MoeFfn::upload_experts(WeightUploader& up) {
  const auto& hp = spec_.hp;
  const auto& plan = *moe_->plan;
  const auto& assign = plan.expert_device[size_t(layer_)];
  auto& devices = *moe_->devices;
  dev_.shards.resize(devices.size());
  for (size_t d = 0; d < devices.size(); ++d) {
    // A device holds the experts it serves and the copies the balancer keeps there; a shard whose
    // experts did not change keeps its weights (a move to a held copy uploads nothing).
    std::vector<int32_t> held;
    for (uint32_t e = 0; e < hp.n_expert; ++e)
      if (plan.holds(layer_, int(e), int(d))) held.push_back(int32_t(e));
    if (held == dev_.shards[d].experts && !dev_.shards[d].local.empty() &&
        (held.empty() || dev_.shards[d].down.body))
      continue;
    dev_.shards[d] = Shard{};
    auto& s = dev_.shards[d];
    s.local.assign(hp.n_expert, -1);
    for (int32_t e : held) {
      s.local[size_t(e)] = int32_t(s.experts.size());
      s.experts.push_back(e);
    }
    if (s.experts.empty()) continue;
    DeviceCtx& c = *devices[d];
    // Experts are the outermost ggml dimension: expert e's bytes are one contiguous range. With
    // two tensors (gate and up of one format), each expert's rows of the first then the second.
    auto slice = [&](const gguf::TensorInfo* t, const gguf::TensorInfo* t2 = nullptr) {
      const int64_t cols = int64_t(t->dims[0]), rows = int64_t(t->dims[1]) * (t2 ? 2 : 1);
      const std::vector<uint8_t> bytes = expert_bytes(t, t2, hp.n_expert, s.experts);
      ops::DeviceWeight dw =
          c.mm->upload(t->type, rows, cols, bytes.data(), int64_t(s.experts.size()));
      up.count(bytes.size());
      return dw;
    };
    if (gate_up_together(ls_.gate_exps, ls_.up_exps)) {
      s.gate_up = slice(ls_.gate_exps, ls_.up_exps);
    } else {
      s.gate = slice(ls_.gate_exps);
      s.up = slice(ls_.up_exps);
    }
    s.down = slice(ls_.down_exps);
    if (ls_.router_b) {
      // Biases of the shard's experts, in its local order (gate then up per expert for gate_up).
      const size_t ff = hp.n_ff_exp, E = hp.n_embd;
      auto upload_rows = [&](std::initializer_list<const std::vector<float>*> parts, size_t width) {
        std::vector<float> rows;
        for (int32_t e : s.experts)
          for (const auto* part : parts)
            rows.insert(rows.end(), part->begin() + size_t(e) * width,
                        part->begin() + size_t(e + 1) * width);
        ClMem m = c.dev->alloc(rows.size() * sizeof(float), CL_MEM_READ_ONLY);
        c.dev->write(m.get(), 0, rows.data(), rows.size() * sizeof(float));
        up.count(rows.size() * sizeof(float));
        return m;
      };
      if (s.gate_up.body) {
        s.gate_up_b = upload_rows({&ref_.gate_b, &ref_.up_b}, ff);
      } else {
        s.gate_b = upload_rows({&ref_.gate_b}, ff);
        s.up_b = upload_rows({&ref_.up_b}, ff);
      }
      s.down_b = upload_rows({&ref_.down_b}, E);
    }
    finish_shard(c, s);
  }
  // The in-step path indexes the home shard by global expert id: it must hold every expert and
  // serve them all.
  dev_.all_on_home =
      int(dev_.shards[size_t(dev_.home)].experts.size()) == int(hp.n_expert) &&
      std::all_of(assign.begin(), assign.end(), [this](int a) { return a == dev_.home; });
  if (!dev_.all_on_home && stream_wanted_ && !stream_) {
    DeviceCtx& home = *devices[size_t(dev_.home)];
    try {
      prepare_stream(home);
      spdlog::debug("{}: layer {}: experts streamed here for steps of {}+ tokens", home.dev->id(),
                    layer_, stream_min_tokens_);
    } catch (const std::exception& e) {
      // No pinned memory or no room for the layer's buffers: big steps go across devices.
      spdlog::warn("{}: layer {}: experts cannot be streamed here ({}); they run where placed",
                   home.dev->id(), layer_, e.what());
      stream_wanted_ = false;
    }
  }
}

void MoeFfn::finish_shard(DeviceCtx& c, Shard& s) const {
  if (s.gate_up.body && c.fold_swiglu && !oai()) c.mm->prepare_swiglu(ls_.down_exps->type);
  s.glu = s.gate_up.body && c.glu_out && !oai() && !s.gate_up_b && c.mm->can_glu(s.gate_up.type);
  if (s.glu) c.mm->prepare_glu(s.gate_up.type);
  // The combine in the down launch (not after gpt-oss's down bias, which comes after it).
  s.combine = c.combine_in_down && !s.down_b && c.mm->can_combine(s.down.type);
  if (s.combine) {
    c.mm->prepare_combine(s.down.type, false);
    if (s.gate_up.body && c.fold_swiglu && !oai()) c.mm->prepare_combine(s.down.type, true);
  }
  s.ffn = c.expert_ffn && s.glu && s.combine && c.mm->can_expert_ffn(s.gate_up, s.down);
  if (s.ffn) c.mm->prepare_expert_ffn(s.gate_up, s.down);
  s.in_route = s.ffn || (c.dev->info().type == DeviceType::kGpu && s.combine && !oai() &&
                         !s.gate_up_b && c.mm->can_expert_ffn(s.gate_up, s.down));
}

void MoeFfn::prepare_stream(DeviceCtx& home) {
  const auto& hp = spec_.hp;
  const int64_t n_exp = int64_t(hp.n_expert);
  auto st = std::make_unique<Stream>();
  if (stream_queue_ && !home.copy_queue_tried) {
    home.copy_queue_tried = true;
    try {
      home.copy_queue = home.dev->new_queue();
    } catch (const std::exception& e) {
      spdlog::warn(
          "{}: no second queue for streamed experts ({}); they are written in order on "
          "its queue",
          home.dev->id(), e.what());
    }
  }
  st->slot = home.streamed_layers % 2;
  // Each weight of every expert repacked once into pinned memory, and the home device's buffer for
  // a weight of its shape in this layer's slot, shared by the streamed layers of that slot: each
  // streamed step writes it (write_stream) and the launches wait for the write (stream_in).
  auto image = [&](const ops::RepackedWeight& rw, gguf::TensorType t) {
    Stream::Image im;
    im.bytes = std::make_unique<PinnedBytes>(*home.dev, rw.bytes.size());
    std::memcpy(im.bytes->data(), rw.bytes.data(), rw.bytes.size());
    im.body = rw.head_offset_bytes;
    const std::string key = std::to_string(int(t)) + ":" + std::to_string(rw.rows) + "x" +
                            std::to_string(rw.cols) + "x" + std::to_string(rw.n_mats) + "/" +
                            std::to_string(st->slot);
    auto it = home.stream_weights.find(key);
    if (it == home.stream_weights.end())
      // Allocated only: every streamed step writes it before its launches read it.
      it = home.stream_weights.emplace(key, home.mm->upload_repacked(t, rw, false)).first;
    im.w = it->second;
    st->images.push_back(std::move(im));
    return it->second;
  };
  // Experts are ggml's outermost dimension: the tensor's bytes are the experts' in order.
  auto whole = [&](const gguf::TensorInfo* t) {
    return image(ops::repack(t->type, int64_t(t->dims[1]), int64_t(t->dims[0]), t->data, n_exp),
                 t->type);
  };
  const gguf::TensorInfo *g = ls_.gate_exps, *u = ls_.up_exps;
  Shard& sh = st->shard;
  sh.experts.resize(size_t(n_exp));
  std::iota(sh.experts.begin(), sh.experts.end(), 0);
  if (gate_up_together(g, u)) {
    // Every expert's gate rows then its up rows, as upload_experts' gate|up slices.
    const std::vector<uint8_t> gu = expert_bytes(g, u, hp.n_expert, sh.experts);
    sh.gate_up =
        image(ops::repack(g->type, int64_t(g->dims[1]) * 2, int64_t(g->dims[0]), gu.data(), n_exp),
              g->type);
  } else {
    sh.gate = whole(g);
    sh.up = whole(u);
  }
  sh.down = whole(ls_.down_exps);
  sh.local = sh.experts;
  finish_shard(home, sh);
  stream_ = std::move(st);
  ++home.streamed_layers;
}

int MoeFfn::stream_break_even(int home) const {
  const auto& hp = spec_.hp;
  if (!moe_->plan || size_t(home) >= moe_->plan->devices.size()) return kStreamDefaultMinTokens;
  const auto& devs = moe_->plan->devices;
  // Writing every expert (the probe times pageable copies; pinned ones are faster, so this errs
  // towards not streaming) against the slowest other device computing the tokens' experts (as if
  // it held them all: a streamed layer's experts are mostly whole on a CPU).
  const double bytes =
      double(ls_.gate_exps->n_bytes() + ls_.up_exps->n_bytes() + ls_.down_exps->n_bytes());
  const double write_s = bytes / (devs[size_t(home)].h2d_gbps * 1e9);
  const double flops_per_token =
      double(hp.n_expert_used) * 3.0 * 2.0 * double(hp.n_ff_exp) * double(hp.n_embd);
  double gflops = 0;
  for (size_t d = 0; d < devs.size(); ++d)
    if (int(d) != home && (gflops == 0 || devs[d].fp32_gflops < gflops))
      gflops = devs[d].fp32_gflops;
  if (!(write_s > 0) || !(gflops > 0)) return kStreamDefaultMinTokens;
  const double per_token_s = flops_per_token / (gflops * 1e9);
  return int(std::clamp(std::ceil(write_s / per_token_s), 1.0, double(1 << 20)));
}

bool MoeFfn::streams(const DeviceCtx& home, int n_tokens) const {
  return stream_ && !dev_.all_on_home && home.index == dev_.home && n_tokens >= stream_min_tokens_;
}

ClEvent MoeFfn::write_stream(DeviceCtx& home) {
  const std::string where = home.dev->info().label();
  // On the copy queue: after everything queued on home (the launches of the layer that used this
  // slot last). Without one the writes take their place in home's queue.
  ClEvent after;
  bool first = bool(home.copy_queue);  // the write that waits for `after`
  if (first) {
    CL_CHECK(clEnqueueMarkerWithWaitList(home.dev->queue(), 0, nullptr, after.out()), where);
    CL_CHECK(clFlush(home.dev->queue()), where);  // a marker another queue waits for is submitted
  }
  cl_command_queue q = home.copy_queue ? home.copy_queue.get() : home.dev->queue();
  ClEvent last;
  for (const auto& im : stream_->images) {
    const PinnedBytes& p = *im.bytes;
    auto write = [&](cl_mem to, const uint8_t* from, size_t bytes) {
      // In-order queue: only the first write waits for the marker; the last gives the event.
      ClEvent done;
      CL_CHECK(clEnqueueWriteBuffer(q, to, CL_FALSE, 0, bytes, from, first ? 1 : 0,
                                    first ? after.ptr() : nullptr, done.out()),
               where);
      first = false;
      last = std::move(done);
    };
    write(im.w.body.get(), p.data(), im.body);
    if (im.w.head) write(im.w.head.get(), p.data() + im.body, p.size() - im.body);
    moe_->stats->streamed_bytes += p.size();
  }
  CL_CHECK(clFlush(q), where);
  return last;
}

void MoeFfn::stream_in(DeviceCtx& home, int n) {
  const std::string where = home.dev->info().label();
  ClEvent ready;
  if (auto it = moe_->stream_writes.find(layer_); it != moe_->stream_writes.end()) {
    ready = std::move(it->second);
    moe_->stream_writes.erase(it);
  } else {
    ready = write_stream(home);
  }
  CL_CHECK(clEnqueueBarrierWithWaitList(home.dev->queue(), 1, ready.ptr(), nullptr), where);
  moe_->stats->streamed_layers += 1;
  // The next streamed layer of this step (layers between run from home's queue meanwhile): in the
  // other slot its write can start now, after the launches queued so far, which are all that may
  // still read that slot.
  for (size_t l = size_t(layer_) + 1; stream_ahead_ && home.copy_queue && l < moe_->layers.size();
       ++l) {
    MoeFfn* next = moe_->layers[l];
    if (!next || !next->streams(home, n)) continue;
    if (next->stream_->slot != stream_->slot) {
      moe_->stream_writes[next->layer_] = next->write_stream(home);
      moe_->stats->streamed_ahead += 1;
    }
    break;
  }
}

bool MoeFfn::expert_ffn(DeviceCtx& c, const Shard& s, cl_mem pair_token, cl_mem pair_expert,
                        int x_rows, int np, bool grouped, const ops::ExpertCombine* combine) {
  const uint32_t ff = spec_.hp.n_ff_exp;
  // Grouped pairs: an expert's run is at most one pair per token (the tiled GEMM's bound).
  const int run = grouped ? x_rows : 0;
  // gpt-oss: the clamped SwiGLU (never folded into down's loads).
  auto activation = [&](const ops::Strided& g, const ops::Strided& u) {
    if (oai())
      c.act->swiglu_oai(g, u, {c.h.get(), 0, ff}, uint32_t(np), ff, 1.702f, 7.0f,
                        {{}, c.prof("activation")});
    else
      c.act->swiglu(g, u, {c.h.get(), 0, ff}, uint32_t(np), ff, {{}, c.prof("activation")});
  };
  if (s.ffn && combine && !grouped && np <= ops::MatmulOp::kExpertFfnMaxPairs) {
    // One launch for the whole FFN and its combine.
    c.mm->run_expert_ffn(s.gate_up, s.down, c.xn.get(), 0, x_rows, pair_token, pair_expert, np,
                         *combine, 0, {}, c.prof("matmul"));
    return true;
  }
  if (s.glu) {
    // One launch for gate, up and SwiGLU: pair row p of h holds silu(gate) * up (ff).
    c.mm->run_experts_glu(s.gate_up, c.xn.get(), 0, x_rows, c.h.get(), 0, pair_token, pair_expert,
                          np, {}, c.prof("matmul"));
  } else if (s.gate_up.body) {
    // One launch for gate and up: pair row p holds gate (ff) then up (ff).
    c.mm->run_experts(s.gate_up, c.xn.get(), 0, x_rows, c.gu.get(), 0, pair_token, pair_expert, np,
                      {}, c.prof("matmul"), false, run);
    if (s.gate_up_b)
      c.ew->add_pair_bias(c.gu.get(), 0, 2 * ff, pair_expert, 0, s.gate_up_b.get(), uint32_t(np),
                          2 * ff, {{}, c.prof("elementwise")});
    if (c.fold_swiglu && !oai() && np <= kFoldSwigluMaxPairs) {
      // Down with SwiGLU folded into its loads of those rows.
      if (combine) {
        c.mm->run_experts_combine(s.down, c.gu.get(), 0, np, c.y.get(), 0, c.iota.get(),
                                  pair_expert, np, true, *combine, {}, c.prof("matmul"));
        return true;
      }
      c.mm->run_experts(s.down, c.gu.get(), 0, np, c.y.get(), 0, c.iota.get(), pair_expert, np, {},
                        c.prof("matmul"), true);
      return false;
    }
    activation({c.gu.get(), 0, 2 * ff}, {c.gu.get(), ff, 2 * ff});
  } else {
    const uint32_t up_off = uint32_t(np) * ff;
    c.mm->run_experts(s.gate, c.xn.get(), 0, x_rows, c.gu.get(), 0, pair_token, pair_expert, np, {},
                      c.prof("matmul"), false, run);
    c.mm->run_experts(s.up, c.xn.get(), 0, x_rows, c.gu.get(), up_off, pair_token, pair_expert, np,
                      {}, c.prof("matmul"), false, run);
    if (s.gate_b) {
      c.ew->add_pair_bias(c.gu.get(), 0, ff, pair_expert, 0, s.gate_b.get(), uint32_t(np), ff,
                          {{}, c.prof("elementwise")});
      c.ew->add_pair_bias(c.gu.get(), up_off, ff, pair_expert, 0, s.up_b.get(), uint32_t(np), ff,
                          {{}, c.prof("elementwise")});
    }
    activation({c.gu.get(), 0, ff}, {c.gu.get(), up_off, ff});
  }
  if (combine) {
    c.mm->run_experts_combine(s.down, c.h.get(), 0, np, c.y.get(), 0, c.iota.get(), pair_expert, np,
                              false, *combine, {}, c.prof("matmul"));
    return true;
  }
  c.mm->run_experts(s.down, c.h.get(), 0, np, c.y.get(), 0, c.iota.get(), pair_expert, np, {},
                    c.prof("matmul"), false, run);
  if (s.down_b)
    c.ew->add_pair_bias(c.y.get(), 0, spec_.hp.n_embd, pair_expert, 0, s.down_b.get(), uint32_t(np),
                        spec_.hp.n_embd, {{}, c.prof("elementwise")});
  return false;
}

bool MoeFfn::combines_in_down(const Shard& s, bool grouped, int n) {
  return s.combine && !grouped && n <= ops::MatmulOp::kCombineMaxTokens;
}

ops::ExpertCombine MoeFfn::combine_args(cl_mem out, bool accumulate, cl_mem weights, cl_mem offsets,
                                        cl_mem pair_token, int n, cl_mem next_norm,
                                        cl_mem xn) const {
  ops::ExpertCombine comb;
  comb.out = out;
  comb.accumulate = accumulate;
  comb.weights = weights;
  comb.offsets = offsets;
  comb.pair_token = pair_token;
  comb.n_tokens = uint32_t(n);
  comb.norm_w = next_norm;
  comb.eps = spec_.hp.rms_eps;
  comb.xn = xn;
  return comb;
}

bool MoeFfn::forward(DeviceCtx& home, const LayerStep& s, cl_mem next_norm) {
  if (s.routed && route_tail_.ffn) {
    // The output projection's launch ran the experts and their combine (route_tail's offer).
    book_choices(home, s.n_tokens);
    return next_norm != nullptr;
  }
  route(home, s);
  return experts(home, s, next_norm);
}

void MoeFfn::route(DeviceCtx& home, const LayerStep& s) {
  if (s.routed) return;  // the output projection's launch did it (route_tail)
  const auto& hp = spec_.hp;
  const int n = s.n_tokens;
  const uint32_t E = hp.n_embd;
  // With an F32 router: the FFN norm, router and top-k in one launch.
  const bool fused_route = s.options->fuse.norm_route && !dev_.router_b &&
                           dev_.router.type == gguf::TensorType::F32 &&
                           home.route->can_norm_route(E, hp.n_expert);
  if (fused_route) {
    home.route->norm_route(home.x.get(), 0, dev_.ffn_norm.get(), hp.rms_eps, E, home.xn.get(), 0,
                           dev_.router.body.get(), uint32_t(dev_.router.blocks_per_row * 32),
                           uint32_t(n), hp.n_expert, device_routing_, home.topk_ids.get(), 0,
                           home.topk_w.get(), 0, home.router.get(), {{}, home.prof("routing")});
  } else {
    home.norm->rms_norm(home.x.get(), 0, dev_.ffn_norm.get(), 0, home.xn.get(), 0, uint32_t(n), E,
                        hp.rms_eps, {{}, home.prof("norm")});
    home.mm->run(dev_.router, home.xn.get(), 0, home.router.get(), 0, n, {}, home.prof("matmul"));
    if (dev_.router_b)
      home.ew->add_row_bias(home.router.get(), 0, hp.n_expert, dev_.router_b.get(), 0, uint32_t(n),
                            hp.n_expert, {{}, home.prof("elementwise")});
    home.route->route(home.router.get(), 0, uint32_t(n), hp.n_expert, device_routing_,
                      home.topk_ids.get(), 0, home.topk_w.get(), 0, {{}, home.prof("routing")});
  }
}

bool MoeFfn::experts(DeviceCtx& home, const LayerStep& s, cl_mem next_norm) {
  if (dev_.all_on_home) return on_home(home, s, dev_.shards[size_t(home.index)], next_norm);
  if (streams(home, s.n_tokens)) {
    // Every expert's weights into one of the home device's layer buffers (non-blocking writes
    // from pinned memory on its copy queue, the launches waiting for them), then the step as on
    // one device.
    ops::host_call(*home.dev, "write the layer's experts from host memory",
                   [this, &home, n = s.n_tokens] { stream_in(home, n); });
    return on_home(home, s, stream_->shard, next_norm);
  }
  // In a step program this is a host-sync point: the program is split here and the rest of the
  // layer runs from the host each time.
  const int n = s.n_tokens;
  ops::host_sync(*home.dev, "route tokens to expert devices",
                 [this, &home, n] { across_devices(home, n); });
  return false;
}

void MoeFfn::book_choices(DeviceCtx& home, int n) {
  const int pairs = n * int(spec_.hp.n_expert_used);
  if (moe_->balancer && moe_->balancer->enabled()) {  // no balancer yet while counting launches
    // At this point of every run of a recorded step: a non-blocking read, in queue order.
    ops::host_call(*home.dev, "copy the router's choice for the balancer", [this, &home, pairs] {
      if (!moe_->count_choices) return;
      auto& pending = moe_->pending_choices.emplace_back();
      pending.layer = layer_;
      pending.count = size_t(pairs);
      int32_t* place = moe_->choice_place(home.index, layer_);
      if (!place) {
        pending.own.resize(size_t(pairs));
        place = pending.own.data();
      }
      pending.ids = place;
      home.dev->read(home.topk_ids.get(), 0, place, size_t(pairs) * 4, false);
    });
  }
  ops::host_call(*home.dev, "count expert hits",
                 [stats = moe_->stats, d = size_t(home.index), pairs] {
                   stats->expert_hits[d] += uint64_t(pairs);
                 });
}

bool MoeFfn::on_home(DeviceCtx& home, const LayerStep& s, const Shard& shard, cl_mem next_norm) {
  const auto& hp = spec_.hp;
  const int n = s.n_tokens;
  const uint32_t E = hp.n_embd;
  // Every expert here: no host round trip. Pair i = (token i / K, expert topk_ids[i]). The
  // balancer's counts come from a non-blocking copy of the choice, read after the step.
  book_choices(home, n);
  const int pairs = n * int(hp.n_expert_used);
  // Many tokens (prefill, big decode batches): the pairs grouped by expert first, so each expert's
  // weights are decoded once per tile of its tokens rather than once per pair; the combine reads
  // the rows back in token order. Few tokens choose distinct experts anyway: pairs stay as routed.
  const bool grouped = n >= kGroupPairsMinTokens;
  cl_mem rows = nullptr;
  if (grouped) {
    home.moe->group_pairs(home.topk_ids.get(), uint32_t(pairs), hp.n_expert_used, hp.n_expert,
                          home.sorted_token.get(), home.sorted_expert.get(), home.pair_row.get(),
                          {{}, home.prof("moe_group")});
    rows = home.pair_row.get();
  }
  // Decode-sized steps: the combine (and next_norm) in the down launch.
  const bool in_down = combines_in_down(shard, grouped, n);
  const ops::ExpertCombine comb =
      combine_args(home.x.get(), true, home.topk_w.get(), home.token_pairs.get(),
                   home.pair_token.get(), n, next_norm, home.xn.get());
  const bool combined =
      expert_ffn(home, shard, grouped ? home.sorted_token.get() : home.pair_token.get(),
                 grouped ? home.sorted_expert.get() : home.topk_ids.get(), n, pairs, grouped,
                 in_down ? &comb : nullptr);
  if (combined) return next_norm != nullptr;
  if (next_norm) {
    home.moe->combine_norm(home.x.get(), 0, home.y.get(), 0, home.topk_w.get(), 0,
                           home.token_pairs.get(), rows, uint32_t(n), E, next_norm, hp.rms_eps,
                           home.xn.get(), 0, {{}, home.prof("moe_combine")});
    return true;
  }
  home.moe->combine(home.x.get(), 0, home.y.get(), 0, home.topk_w.get(), 0, home.token_pairs.get(),
                    rows, uint32_t(n), E, true, {{}, home.prof("moe_combine")});
  return false;
}

void MoeFfn::across_devices(DeviceCtx& home, int n) {
  const auto& hp = spec_.hp;
  const int K = int(hp.n_expert_used);
  const int pairs = n * K;
  auto& devices = *moe_->devices;
  // The router's choice comes to the host (a few bytes per token), each device gets the pairs of
  // its experts, and the devices run them concurrently. One read: ids, weights and (when a device
  // of another context takes experts) the normed activations.
  bool any_foreign = false;
  for (size_t d = 0; d < devices.size(); ++d)
    any_foreign |= &home != devices[d].get() && moe_->plan->experts_on(layer_, int(d)) > 0 &&
                   devices[d]->dev->context() != home.dev->context();
  const auto& at = home.stage_at;
  const auto t_read = Clock::now();
  {
    const size_t end =
        any_foreign ? at.normed + size_t(n) * hp.n_embd * 4 : at.topk_w + size_t(pairs) * 4;
    home.dev->read(home.stage.get(), at.topk_ids, home.h_stage + at.topk_ids, end - at.topk_ids,
                   true);
  }
  const auto t_lanes = Clock::now();
  const int32_t* ids = reinterpret_cast<const int32_t*>(home.h_stage + at.topk_ids);
  const float* wts = reinterpret_cast<const float*>(home.h_stage + at.topk_w);
  const float* xn_host = reinterpret_cast<const float*>(home.h_stage + at.normed);
  for (int t = 0; t < n; ++t) moe_->balancer->record(layer_, ids + size_t(t) * K, K);

  // Each pair goes to the device serving its expert (others may hold a copy).
  const auto& assign = moe_->plan->expert_device[size_t(layer_)];
  std::vector<std::function<void()>> jobs(devices.size());
  std::vector<int> remote;
  moe_->lane_seconds.assign(devices.size(), 0.0);
  moe_->lane_wait_seconds.assign(devices.size(), 0.0);
  for (size_t d = 0; d < devices.size(); ++d) {
    auto& s = dev_.shards[d];
    if (s.experts.empty()) continue;
    DeviceCtx& c = *devices[d];
    c.h_tok.clear();
    c.h_exp.clear();
    c.h_w.clear();
    c.h_off.assign(1, 0);
    for (int t = 0; t < n; ++t) {
      for (int j = 0; j < K; ++j) {
        const int32_t e = ids[size_t(t * K + j)];
        if (e < 0 || uint32_t(e) >= hp.n_expert)
          throw std::runtime_error("layer " + std::to_string(layer_) + ": router chose expert " +
                                   std::to_string(e));
        if (assign[size_t(e)] != int(d) || s.local[size_t(e)] < 0) continue;
        c.h_tok.push_back(t);
        c.h_exp.push_back(s.local[size_t(e)]);
        c.h_w.push_back(wts[size_t(t * K + j)]);
      }
      c.h_off.push_back(int32_t(c.h_tok.size()));
    }
    const int np = int(c.h_tok.size());
    if (np == 0) continue;
    moe_->stats->expert_hits[d] += uint64_t(np);
    const bool is_home = &c == &home;
    if (!is_home) remote.push_back(int(d));
    jobs[d] = [this, &c, &s, &home, xn_host, n, np, is_home] {
      const auto t0 = Clock::now();
      const uint32_t E = spec_.hp.n_embd;
      const auto& cat = c.stage_at;
      // Pairs (and, off the home device, the normed activations) in one write of the stage.
      // Many tokens: the pairs go to the expert matmuls grouped by expert (stable) and the
      // combine finds each token's rows through pair_row, as on one device.
      const bool grouped = n >= kGroupPairsMinTokens;
      uint8_t* st = c.h_stage;
      if (grouped) {
        c.h_order.resize(size_t(np));
        std::iota(c.h_order.begin(), c.h_order.end(), 0);
        std::stable_sort(c.h_order.begin(), c.h_order.end(), [&c](int32_t a, int32_t b) {
          return c.h_exp[size_t(a)] < c.h_exp[size_t(b)];
        });
        c.h_row.resize(size_t(np));
        auto* tok = reinterpret_cast<int32_t*>(st + cat.pair_token);
        auto* exp = reinterpret_cast<int32_t*>(st + cat.pair_expert);
        for (int q = 0; q < np; ++q) {
          const auto p = size_t(c.h_order[size_t(q)]);
          tok[q] = c.h_tok[p];
          exp[q] = c.h_exp[p];
          c.h_row[p] = q;
        }
        std::memcpy(st + cat.pair_row, c.h_row.data(), size_t(np) * 4);
      } else {
        std::memcpy(st + cat.pair_token, c.h_tok.data(), size_t(np) * 4);
        std::memcpy(st + cat.pair_expert, c.h_exp.data(), size_t(np) * 4);
      }
      std::memcpy(st + cat.pair_weight, c.h_w.data(), size_t(np) * 4);
      std::memcpy(st + cat.token_offset, c.h_off.data(), c.h_off.size() * 4);
      size_t end = cat.token_offset + c.h_off.size() * 4;
      const bool shared = !is_home && c.dev->context() == home.dev->context();
      if (!is_home && !shared) {
        std::memcpy(st + cat.normed, xn_host, size_t(n) * E * 4);
        end = cat.normed + size_t(n) * E * 4;
      }
      if (!c.shared_stage) c.dev->write(c.stage.get(), 0, st, end, false);
      // Same context: the activations move device to device, after the home queue's work.
      if (shared)
        ops::copy_after(*home.dev, *c.dev, home.xn.get(), 0, c.xn.get(), 0, size_t(n) * E * 4);
      // Home accumulates into the residual stream; others produce a partial sum to send back
      // (decode-sized steps: in the down launch).
      cl_mem out = is_home ? c.x.get() : c.partial.get();
      const ops::ExpertCombine comb = combine_args(out, is_home, c.p_w.get(), c.p_off.get(),
                                                   c.p_tok.get(), n, nullptr, nullptr);
      const bool in_down = combines_in_down(s, grouped, n);
      if (!expert_ffn(c, s, c.p_tok.get(), c.p_exp.get(), n, np, grouped,
                      in_down ? &comb : nullptr))
        c.moe->combine(out, 0, c.y.get(), 0, c.p_w.get(), 0, c.p_off.get(),
                       grouped ? c.p_row.get() : nullptr, uint32_t(n), E, is_home,
                       {{}, c.prof("moe_combine")});
      const auto t_wait = Clock::now();
      if (!is_home && !shared && !c.shared_partial) {
        c.staging.resize(size_t(n) * E);
        c.dev->read(c.partial.get(), 0, c.staging.data(), c.staging.size() * 4, true);
      } else {
        // The data stays on the device, or is in host memory once the queue finished (and the
        // lane's device time is measured either way).
        c.dev->finish();
      }
      const auto t_end = Clock::now();
      moe_->lane_seconds[size_t(c.index)] = std::chrono::duration<double>(t_end - t0).count();
      moe_->lane_wait_seconds[size_t(c.index)] =
          std::chrono::duration<double>(t_end - t_wait).count();
    };
  }
  moe_->executor->run_all(jobs);
  const auto t_back = Clock::now();
  SyncTiming* timing = moe_->sync_timing;
  for (size_t d = 0; d < devices.size(); ++d) {
    moe_->stats->device_seconds[d] += moe_->lane_seconds[d];
    moe_->balancer->record_device_seconds(int(d), moe_->lane_seconds[d]);
    if (jobs[d] && devices[d]->shared_stage) ++moe_->stats->zero_copy_jobs;
    if (timing && jobs[d]) {
      const std::string& id = devices[d]->dev->id();
      timing->lane_enqueue[id] += moe_->lane_seconds[d] - moe_->lane_wait_seconds[d];
      timing->lane_wait[id] += moe_->lane_wait_seconds[d];
    }
  }
  const size_t bytes = size_t(n) * hp.n_embd * 4;
  for (int d : remote) {
    DeviceCtx& c = *devices[size_t(d)];
    if (c.dev->context() == home.dev->context()) {
      ops::copy_after(*c.dev, *home.dev, c.partial.get(), 0, home.partial.get(), 0, bytes);
    } else {
      // Not waited for: the source (c.staging, c's shared partial, or the home's pinned copy of
      // either) is next written by a later host sync, after a blocking read of the home's
      // (in-order) queue.
      const void* src =
          c.shared_partial ? static_cast<const void*>(c.shared_partial->data()) : c.staging.data();
      if (uint8_t* pinned = home.back_place(d)) {
        std::memcpy(pinned, src, bytes);
        src = pinned;
      }
      home.dev->write(home.partial.get(), 0, src, bytes, false);
    }
    home.ew->add(home.x.get(), 0, home.partial.get(), 0, home.x.get(), 0, uint32_t(n) * hp.n_embd,
                 {{}, home.prof("elementwise")});
  }
  if (timing) {
    const auto t_end = Clock::now();
    ++timing->syncs;
    timing->read += std::chrono::duration<double>(t_lanes - t_read).count();
    timing->lanes += std::chrono::duration<double>(t_back - t_lanes).count();
    timing->back += std::chrono::duration<double>(t_end - t_back).count();
  }
}

size_t MoeFfn::count_expert_launches(int experts_per_token) {
  size_t d = 0;
  while (d < dev_.shards.size() && dev_.shards[d].experts.empty()) ++d;
  if (d == dev_.shards.size()) throw std::logic_error("MoeFfn: no device holds experts");
  DeviceCtx& c = *(*moe_->devices)[d];
  ops::StepProgram experts(ops::StepProgram::Mode::kCountOnly);
  {
    const Device* one[] = {c.dev};
    ops::Recording recording(experts, one);
    const ops::ExpertCombine comb =
        combine_args(c.x.get(), true, c.topk_w.get(), c.token_pairs.get(), c.pair_token.get(), 1,
                     nullptr, nullptr);
    const Shard& s = dev_.shards[d];
    if (!expert_ffn(c, s, c.pair_token.get(), c.topk_ids.get(), 1, experts_per_token, false,
                    combines_in_down(s, false, 1) ? &comb : nullptr))
      c.moe->combine(c.x.get(), 0, c.y.get(), 0, c.topk_w.get(), 0, c.token_pairs.get(), nullptr, 1,
                     spec_.hp.n_embd, true, {});
  }
  return experts.launches();
}

void MoeFfn::reference_forward(std::span<float> x) const {
  std::vector<float> cur(x.size()), out(x.size());
  reference::rms_norm(x, ref_ffn_norm_, spec_.hp.rms_eps, cur);
  reference::moe_ffn(cur, ref_, routing_, out);
  for (size_t i = 0; i < x.size(); ++i) x[i] += spec_.hp.residual_scale * out[i];
}

}  // namespace tessera::engine
