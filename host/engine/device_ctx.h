// What the layers of a step run with on one plan device: its ops, its activation buffers (sized for
// a step of max_batch_tokens tokens) and its profiling events. Shared by OpenClModel and the layer
// classes in layers/; not part of the engine's public interface.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "devices/device.h"
#include "host/kv/kv_batch.h"
#include "host/kv/recurrent_batch.h"
#include "host/model/model_spec.h"
#include "host/ops/device/activation.h"
#include "host/ops/device/attention.h"
#include "host/ops/device/deltanet.h"
#include "host/ops/device/elementwise.h"
#include "host/ops/device/embedding.h"
#include "host/ops/device/matmul.h"
#include "host/ops/device/moe.h"
#include "host/ops/device/norm.h"
#include "host/ops/device/routing.h"
#include "host/ops/device/ssm.h"

namespace tessera::engine {

// Sizes the buffers of a DeviceCtx are allocated for, and where its MoE stage lives.
struct DeviceCtxSizes {
  int max_tokens = 0;  // tokens of one step
  int max_pairs = 0;   // (token, expert) pairs of one step: max_tokens * experts per token
  uint32_t n_embd = 0;
  uint32_t max_ff = 0;    // widest FFN (dense or expert)
  uint32_t n_expert = 0;  // router outputs (0: dense model)
  uint32_t experts_per_token = 1;
  // `stage` and `partial` in host memory the device uses in place (SharedBytes), so the
  // multi-device MoE path moves a layer's pairs, activations and partial sum with no write or
  // read command. For devices that hold experts and no layers (their queue runs nothing but those
  // MoE jobs, each finished before the next one's host writes), share host memory and offer
  // fine-grained buffer SVM.
  bool shared_stage = false;
};

// Host memory a device's kernels use in place: a fine-grained SVM allocation of its context
// wrapped as a buffer (CL_MEM_USE_HOST_PTR over an SVM pointer makes that allocation the buffer's
// storage, OpenCL 2.0 section 5.6.1). Fine-grained buffers are coherent at the queue's
// synchronization points, so the host writes it before enqueueing the commands that read it and
// reads it after they completed, with no write or read command (each costs tens of microseconds
// on PoCL). Throws ClError when the device cannot provide it.
class SharedBytes {
 public:
  SharedBytes(const Device& device, size_t bytes);
  ~SharedBytes();  // releases the buffer, then frees the allocation
  SharedBytes(const SharedBytes&) = delete;
  SharedBytes& operator=(const SharedBytes&) = delete;
  uint8_t* data() const { return static_cast<uint8_t*>(ptr_); }
  // The buffer over it (a new reference).
  ClMem buffer() const { return buf_; }

 private:
  cl_context ctx_ = nullptr;
  void* ptr_ = nullptr;
  ClMem buf_;
};

// Host bytes that `device` reads straight from host memory: a CL_MEM_ALLOC_HOST_PTR buffer of its
// context mapped for its whole life (drivers pin such buffers, so writes from them run at the
// copy engine's speed instead of through a pageable staging copy), for data written to the device
// again and again (MoeFfn's streamed experts). Throws ClError when the device cannot provide it.
class PinnedBytes {
 public:
  PinnedBytes(const Device& device, size_t bytes);
  ~PinnedBytes();
  PinnedBytes(const PinnedBytes&) = delete;
  PinnedBytes& operator=(const PinnedBytes&) = delete;
  uint8_t* data() const { return ptr_; }
  size_t size() const { return bytes_; }

 private:
  const Device* dev_ = nullptr;
  ClMem buf_;
  uint8_t* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Thread-safety: one thread at a time (the engine thread, or the executor lane of this device
// during a multi-device MoE layer).
struct DeviceCtx {
  DeviceCtx(int plan_index, const Device& device, const DeviceCtxSizes& sizes, bool profile);

  int index = 0;  // in the plan
  const Device* dev = nullptr;
  std::unique_ptr<ops::MatmulOp> mm;
  std::unique_ptr<ops::NormOps> norm;
  std::unique_ptr<ops::ActivationOps> act;
  std::unique_ptr<ops::RoutingOps> route;
  std::unique_ptr<ops::ElementwiseOps> ew;
  std::unique_ptr<ops::EmbeddingOps> embed;
  std::unique_ptr<ops::MoeOps> moe;
  bool has_layers = false;  // holds layers (or the embedding / output): attention buffers below
  // SwiGLU folded into the down projection's loads: each row group recomputes its inputs' SiLU,
  // nearly free on GPUs, a loss on CPUs (there a separate launch computes it once).
  bool fold_swiglu = false;
  // Where SwiGLU is not folded (CPUs): the gate|up expert launch applies it to its own products
  // (MatmulOp::run_experts_glu), so no activation launch runs.
  bool glu_out = false;
  // Decode attention combines its chunks in the same launch (AttentionTuning::fused_reduce).
  bool fused_attention_reduce = true;
  // Decode steps finish q/k/v (norms, RoPE, KV store) in the decode attention launch.
  bool finish_in_decode = true;
  // Decode-sized MoE steps run the expert combine (and the next norm) in the down launch
  // (MatmulOp::run_experts_combine).
  bool combine_in_down = false;
  // Decode-sized MoE steps run each shard's gate|up, SwiGLU, down and combine in one launch
  // (MatmulOp::run_expert_ffn; CPUs, where every launch is a fork/join over all threads).
  bool expert_ffn = false;

  // The SVM behind `stage` and `partial` (DeviceCtxSizes::shared_stage; null otherwise). Declared
  // before them: freed after every buffer over it is released.
  std::unique_ptr<SharedBytes> shared_stage, shared_partial;

  // Activations of one step ([token][...] rows of f32).
  ClMem x;        // the residual stream [n_embd]
  ClMem xn;       // normed input of the current block [n_embd] (a region of `stage`)
  ClMem partial;  // a device's partial MoE sum, or one received from another device [n_embd]
  ClMem y;        // expert outputs, one row per (token, expert) pair [n_embd]
  ClMem gu;       // gate | up rows per token or pair [2 * ff] (or all gate rows, then all up rows)
  ClMem h;        // SwiGLU output per token or pair [ff]
  ClMem router;   // router logits [n_expert]
  ClMem tokens;   // the step's token ids (int32)
  ClMem logits;   // logit rows (the output device only)
  ClMem ids;      // their argmax, one int32 per row (the output device only)
  // Constant index lists: iota [0, max_pairs), pair -> token (i / k), token -> first pair (t * k).
  ClMem iota, pair_token, token_pairs;
  // A step's pairs grouped by expert (MoeOps::group_pairs; int32 per pair): token and expert in
  // expert order, and each token-major pair's row in that order.
  ClMem sorted_token, sorted_expert, pair_row;

  // Attention, on devices with layers: per (KV head count, window, K format, V format) of its
  // layers, one op (a layer's op is looked up once, at construction).
  std::map<std::tuple<int32_t, int32_t, kv::KvFormat, kv::KvFormat>,
           std::unique_ptr<ops::AttentionOp>>
      attention_ops;
  ops::AttentionOp& attention(const ops::AttentionConfig& config);
  // The step's batch per KV layer group (kv::PagedKvCache::group_of: layers of one window share
  // block tables, each group has its own), for the groups whose layers run here (null / empty
  // elsewhere). use_kv_group() creates a group's buffers (at construction).
  std::vector<std::unique_ptr<kv::KvBatchBuffers>> batches;
  std::vector<kv::KvBatchView> views;  // this step's batch on this device, per group
  void use_kv_group(int group);
  ClMem qkv;        // a step's projections: one q | k | v (| gate) row per token
  ClMem q;          // q after norm + RoPE, packed [q_dim]
  ClMem att;        // attention output [q_dim]
  ClMem workspace;  // split-K decode scratch
  size_t workspace_bytes = 0;
  ClMem rope_freqs;  // the model's rope_freqs.weight (n_rot/2 floats), when it has them
  // gate_dim: the output gate's floats in a qkv row (gated attention; 0: none).
  void allocate_attention(int max_tokens, int max_sequences, int blocks_per_seq, uint32_t q_dim,
                          uint32_t max_kv_dim, uint32_t gate_dim = 0);

  // Recurrent mixers (Mamba2, Gated DeltaNet), on devices holding such layers (empty elsewhere):
  // their ops (deltanet: created by the first Gated DeltaNet layer's upload), the
  // step's batch of sequences (first token row, token count, state slot per sequence; uploaded by
  // OpenClModel::forward into recurrent_view) and their activations: in-projection rows, conv
  // outputs and scan outputs of a step's tokens. use_recurrent() creates them (at upload, after
  // allocate_attention), for the widest layer asked for; the first call's prefill form is ssm's.
  std::unique_ptr<ops::SsmOps> ssm;
  std::unique_ptr<ops::DeltaNetOps> deltanet;
  std::unique_ptr<kv::RecurrentBatchBuffers> recurrent_batch;
  kv::RecurrentBatchView recurrent_view;
  ClMem ssm_proj, ssm_conv, ssm_y;
  void use_recurrent(int max_sequences, uint32_t proj_rows, uint32_t conv_channels,
                     uint32_t d_inner, ops::PrefillForm prefill_form = ops::PrefillForm::kAuto);

  // The multi-device MoE path's per-step data lives in one buffer, `stage`, so a job's pairs and
  // activations reach a device in one write and the router's choice plus the normed activations
  // leave it in one read (each command costs tens of microseconds on PoCL). Regions (byte offsets,
  // each also a sub-buffer): pair lists of the pairs this device serves, then the router's top-k
  // of every token, then the normed activations (xn).
  struct StageLayout {
    size_t pair_token = 0;    // int32 per pair: batch token
    size_t pair_expert = 0;   // int32 per pair: local expert index on this device
    size_t pair_weight = 0;   // f32 per pair: routing weight
    size_t pair_row = 0;      // int32 per pair: its expert output row (pairs grouped by expert)
    size_t token_offset = 0;  // int32 per token + 1: first pair of each token
    size_t topk_ids = 0;      // int32 [token][k]: the router's choice
    size_t topk_w = 0;        // f32 [token][k]: its weights
    size_t normed = 0;        // f32 [token][n_embd]: xn
    size_t bytes = 0;
  } stage_at;
  ClMem stage, p_tok, p_exp, p_w, p_row, p_off, topk_ids, topk_w;
  // The host image of `stage`: its shared memory itself, or h_stage_copy / pinned_stage (moved
  // by commands).
  uint8_t* h_stage = nullptr;
  std::vector<uint8_t> h_stage_copy;
  // A device that holds layers in a multi-device plan (pin_stage): the image of its stage and the
  // partial sums other devices send it, in pinned host memory, so its reads and writes of them
  // run at the copy engine's speed without staging copies (null otherwise).
  std::unique_ptr<PinnedBytes> pinned_stage, pinned_back;
  size_t back_bytes = 0;  // per sending device in pinned_back
  // Throws ClError where the device cannot pin host memory (the pageable images stay).
  void pin_stage(int n_devices);
  // Where device `from`'s partial sum goes before its write to this device: pinned_back's
  // region, or null.
  uint8_t* back_place(int from) const;
  std::vector<int32_t> h_tok, h_exp, h_off;  // pair lists built on the host
  std::vector<int32_t> h_order, h_row;       // grouping them by expert
  std::vector<float> h_w, staging;           // their weights; host staging of activations
  // Layer-sized expert weights that streamed MoE layers write before each use (MoeFfn::Stream),
  // two per weight shape ("type:rows x cols x experts/slot"): layers take slots in turn, so one
  // layer's write runs while the layer before computes from the other.
  std::map<std::string, ops::DeviceWeight> stream_weights;
  int streamed_layers = 0;  // layers that stream here (the next one takes slot streamed_layers % 2)
  // The queue those writes go to (created with the first streamed layer), ordered against `dev`'s
  // queue by events: a layer's launches wait for its write, a write for the launches before it.
  // None (EngineOptions::stream_queue off, or the device could not create one): the writes go in
  // order on `dev`'s queue.
  ClQueue copy_queue;
  bool copy_queue_tried = false;

  // Profiling: each launch's completion event, by op family (only when profiling). A deque, so the
  // event a launch writes through prof()'s pointer stays put while later ones are added.
  cl_event* prof(const char* family);
  // Adds the device time of every recorded event to `seconds` and drops them (call after the queue
  // finished).
  void collect(std::map<std::string, double>& seconds);

 private:
  bool profile_ = false;
  int batch_tokens_ = 0, batch_seqs_ = 0, batch_blocks_per_seq_ = 0;      // sizes of `batches`
  uint32_t ssm_proj_rows_ = 0, ssm_conv_channels_ = 0, ssm_d_inner_ = 0;  // of the ssm_* buffers
  std::deque<std::pair<const char*, ClEvent>> events_;
};

// Any two devices: a queue copy on one device, an event-ordered device copy within one context,
// through host memory across platforms (a host-sync point of a step program).
void copy_between(DeviceCtx& from, cl_mem src, size_t src_off, DeviceCtx& to, cl_mem dst,
                  size_t dst_off, size_t bytes);

}  // namespace tessera::engine
