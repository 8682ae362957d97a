// A plan device's ops and step buffers, profiling events, and copies between devices.
#include "host/engine/device_ctx.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "host/ops/device/step_program.h"

namespace tessera::engine {

DeviceCtx::DeviceCtx(int plan_index, const Device& device, const DeviceCtxSizes& s, bool profile)
    : index(plan_index), dev(&device), profile_(profile) {
  mm = std::make_unique<ops::MatmulOp>(device);
  norm = std::make_unique<ops::NormOps>(device);
  act = std::make_unique<ops::ActivationOps>(device);
  route = std::make_unique<ops::RoutingOps>(device);
  ew = std::make_unique<ops::ElementwiseOps>(device);
  embed = std::make_unique<ops::EmbeddingOps>(device);
  moe = std::make_unique<ops::MoeOps>(device);
  const size_t f = sizeof(float), T = size_t(s.max_tokens), P = size_t(s.max_pairs);
  x = device.alloc(T * s.n_embd * f);
  {
    // One buffer, sub-buffer regions aligned for any device (4 KiB covers every base-address
    // alignment seen).
    const size_t align = 4096;
    auto region = [&](size_t bytes) {
      const size_t at = stage_at.bytes;
      stage_at.bytes = ops::round_up(at + bytes, align);
      return at;
    };
    stage_at.pair_token = region(P * 4);
    stage_at.pair_expert = region(P * 4);
    stage_at.pair_weight = region(P * 4);
    stage_at.pair_row = region(P * 4);
    stage_at.token_offset = region((T + 1) * 4);
    stage_at.topk_ids = region(P * 4);
    stage_at.topk_w = region(P * 4);
    stage_at.normed = region(T * s.n_embd * f);
    // Shared memory where asked for and the driver provides it; device memory otherwise.
    if (s.shared_stage) {
      try {
        shared_stage = std::make_unique<SharedBytes>(device, stage_at.bytes);
      } catch (const ClError& e) {
        spdlog::warn("{}: MoE stage in device memory ({})", device.id(), e.what());
      }
    }
    if (shared_stage) {
      stage = shared_stage->buffer();
      h_stage = shared_stage->data();
      spdlog::info("{}: MoE pairs, activations and partial sums in shared host memory (SVM)",
                   device.id());
    } else {
      stage = device.alloc(stage_at.bytes);
      h_stage_copy.resize(stage_at.bytes);
      h_stage = h_stage_copy.data();
    }
    auto sub = [&](size_t at, size_t bytes) {
      cl_buffer_region r{at, bytes};
      cl_int err = CL_SUCCESS;
      cl_mem m =
          clCreateSubBuffer(stage.get(), CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &r, &err);
      if (err != CL_SUCCESS) throw ClError("clCreateSubBuffer", err, device.info().label());
      return ClMem(m);
    };
    p_tok = sub(stage_at.pair_token, P * 4);
    p_exp = sub(stage_at.pair_expert, P * 4);
    p_w = sub(stage_at.pair_weight, P * 4);
    p_row = sub(stage_at.pair_row, P * 4);
    p_off = sub(stage_at.token_offset, (T + 1) * 4);
    topk_ids = sub(stage_at.topk_ids, P * 4);
    topk_w = sub(stage_at.topk_w, P * 4);
    xn = sub(stage_at.normed, T * s.n_embd * f);
  }
  if (shared_stage) {
    try {
      shared_partial = std::make_unique<SharedBytes>(device, T * s.n_embd * f);
      partial = shared_partial->buffer();
    } catch (const ClError& e) {
      spdlog::warn("{}: MoE partial sums in device memory ({})", device.id(), e.what());
      partial = device.alloc(T * s.n_embd * f);
    }
  } else {
    partial = device.alloc(T * s.n_embd * f);
  }
  y = device.alloc(P * s.n_embd * f);
  gu = device.alloc(P * 2 * s.max_ff * f);
  h = device.alloc(P * s.max_ff * f);
  router = device.alloc(T * std::max<uint32_t>(s.n_expert, 1) * f);
  tokens = device.alloc(T * sizeof(int32_t));
  sorted_token = device.alloc(P * sizeof(int32_t));
  sorted_expert = device.alloc(P * sizeof(int32_t));
  pair_row = device.alloc(P * sizeof(int32_t));
  const int K = int(s.experts_per_token);
  std::vector<int32_t> iota_h(P), pair_token_h(P), token_pairs_h(T + 1);
  std::iota(iota_h.begin(), iota_h.end(), 0);
  for (size_t i = 0; i < P; ++i) pair_token_h[i] = int32_t(i) / K;
  for (size_t t = 0; t <= T; ++t) token_pairs_h[t] = int32_t(t) * K;
  auto constant = [&](const std::vector<int32_t>& v) {
    ClMem m = device.alloc(v.size() * 4);
    device.write(m.get(), 0, v.data(), v.size() * 4);
    return m;
  };
  iota = constant(iota_h);
  pair_token = constant(pair_token_h);
  token_pairs = constant(token_pairs_h);
}

ops::AttentionOp& DeviceCtx::attention(const ops::AttentionConfig& config) {
  auto& op = attention_ops[{config.pool.n_head_kv, config.window, config.pool.format,
                            config.v_format.value_or(config.pool.format)}];
  if (!op) {
    ops::AttentionTuning t = ops::default_attention_tuning(*dev, config);
    t.fused_reduce = fused_attention_reduce;
    t.decode_finish = finish_in_decode;
    op = std::make_unique<ops::AttentionOp>(*dev, config, t);
  }
  return *op;
}

void DeviceCtx::allocate_attention(int max_tokens, int max_sequences, int blocks_per_seq,
                                   uint32_t q_dim, uint32_t max_kv_dim, uint32_t gate_dim) {
  batch_tokens_ = max_tokens;
  batch_seqs_ = max_sequences;
  batch_blocks_per_seq_ = blocks_per_seq;
  const size_t T = size_t(max_tokens);
  q = dev->alloc(T * q_dim * 4);
  att = dev->alloc(T * q_dim * 4);
  qkv = dev->alloc(T * (q_dim + 2 * max_kv_dim + gate_dim) * 4);
}

void DeviceCtx::use_recurrent(int max_sequences, uint32_t proj_rows, uint32_t conv_channels,
                              uint32_t d_inner, ops::PrefillForm prefill_form) {
  if (!ssm) ssm = std::make_unique<ops::SsmOps>(*dev, ops::ScanForm::kAuto, prefill_form);
  // Allocated up front for the largest batch, so the batch buffer (a kernel argument) never moves.
  if (!recurrent_batch)
    recurrent_batch = std::make_unique<kv::RecurrentBatchBuffers>(*dev, max_sequences);
  const size_t T = size_t(batch_tokens_);
  if (proj_rows > ssm_proj_rows_) {
    ssm_proj = dev->alloc(T * proj_rows * 4);
    ssm_proj_rows_ = proj_rows;
  }
  if (conv_channels > ssm_conv_channels_) {
    ssm_conv = dev->alloc(T * conv_channels * 4);
    ssm_conv_channels_ = conv_channels;
  }
  if (d_inner > ssm_d_inner_) {
    ssm_y = dev->alloc(T * d_inner * 4);
    ssm_d_inner_ = d_inner;
  }
}

void DeviceCtx::use_kv_group(int group) {
  if (batches.size() <= size_t(group)) {
    batches.resize(size_t(group) + 1);
    views.resize(size_t(group) + 1);
  }
  // Block tables as long as the longest sequence's, so the batch layout (and every kernel argument
  // a recorded step took from it) stays the same while sequences grow.
  if (!batches[size_t(group)])
    batches[size_t(group)] = std::make_unique<kv::KvBatchBuffers>(*dev, batch_blocks_per_seq_,
                                                                  batch_seqs_, batch_tokens_);
}

cl_event* DeviceCtx::prof(const char* family) {
  // Recorded launches have no events (count_launches records with profiling on too).
  if (!profile_ || ops::recording_for(*dev)) return nullptr;
  events_.emplace_back(family, ClEvent());
  return events_.back().second.out();  // written by the launch before the next prof() call
}

void DeviceCtx::collect(std::map<std::string, double>& seconds) {
  for (auto& [family, ev] : events_) {
    if (!ev) continue;
    cl_ulong start = 0, end = 0;
    if (clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_START, sizeof(start), &start,
                                nullptr) == CL_SUCCESS &&
        clGetEventProfilingInfo(ev.get(), CL_PROFILING_COMMAND_END, sizeof(end), &end, nullptr) ==
            CL_SUCCESS &&
        end > start)
      seconds[family] += double(end - start) * 1e-9;
  }
  events_.clear();
}

PinnedBytes::PinnedBytes(const Device& device, size_t bytes)
    : dev_(&device), bytes_(std::max<size_t>(bytes, 1)) {
  buf_ = device.alloc(bytes_, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR);
  cl_int err = CL_SUCCESS;
  void* p = clEnqueueMapBuffer(device.queue(), buf_.get(), CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0,
                               bytes_, 0, nullptr, nullptr, &err);
  if (err != CL_SUCCESS || !p) throw ClError("clEnqueueMapBuffer", err, device.info().label());
  ptr_ = static_cast<uint8_t*>(p);
}

PinnedBytes::~PinnedBytes() {
  if (!ptr_) return;
  // Commands reading ptr_ are in this queue's order before the unmap; the release waits for them.
  const cl_int err = clEnqueueUnmapMemObject(dev_->queue(), buf_.get(), ptr_, 0, nullptr, nullptr);
  if (err != CL_SUCCESS) spdlog::warn("clEnqueueUnmapMemObject failed: {}", cl_error_name(err));
}

void DeviceCtx::pin_stage(int n_devices) {
  if (shared_stage) throw std::logic_error(dev->id() + ": pin_stage on a shared stage");
  const size_t activations = stage_at.bytes - stage_at.normed;  // a step's f32 rows of n_embd
  auto image = std::make_unique<PinnedBytes>(*dev, stage_at.bytes);
  auto back = std::make_unique<PinnedBytes>(*dev, size_t(n_devices) * activations);
  pinned_stage = std::move(image);
  pinned_back = std::move(back);
  back_bytes = activations;
  h_stage = pinned_stage->data();
  h_stage_copy = {};
}

uint8_t* DeviceCtx::back_place(int from) const {
  return pinned_back ? pinned_back->data() + size_t(from) * back_bytes : nullptr;
}

SharedBytes::SharedBytes(const Device& device, size_t bytes) : ctx_(device.context()) {
  if (!device.info().caps.svm_fine_grain)
    throw ClError("clSVMAlloc", CL_INVALID_OPERATION, device.info().label(),
                  "the device offers no fine-grained buffer SVM");
  bytes = std::max<size_t>(bytes, 1);
  ptr_ = clSVMAlloc(ctx_, CL_MEM_READ_WRITE | CL_MEM_SVM_FINE_GRAIN_BUFFER, bytes, 0);
  if (!ptr_)
    throw ClError("clSVMAlloc", CL_MEM_OBJECT_ALLOCATION_FAILURE, device.info().label(),
                  std::to_string(bytes) + " bytes of fine-grained SVM");
  try {
    buf_ = device.alloc(bytes, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, ptr_);
  } catch (...) {
    clSVMFree(ctx_, ptr_);
    throw;
  }
}

SharedBytes::~SharedBytes() {
  buf_ = ClMem();
  clSVMFree(ctx_, ptr_);
}

void copy_between(DeviceCtx& from, cl_mem src, size_t src_off, DeviceCtx& to, cl_mem dst,
                  size_t dst_off, size_t bytes) {
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

}  // namespace tessera::engine
