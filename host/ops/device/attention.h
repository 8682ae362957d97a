// Attention over the paged KV cache (host/kv): the KV write, flash-style causal prefill and split-K
// decode kernels of cl_kernels/attention.cl, for one (device, head shape, KV pool layout). The
// kernels read and write K/V rows only through the row codec of the pool's format
// (cl_kernels/attention_kv.clh), rows addressed by bytes (KvPoolLayout::token_head_bytes()); K and
// V may have different formats, each with its codec (quantized on write, read as codes).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "devices/device.h"
#include "host/common/error.h"
#include "host/kv/kv_view.h"
#include "host/ops/device/launch.h"
#include "host/ops/reference/rope.h"

namespace tessera::ops {

struct AttentionConfig {
  int32_t n_head = 0;  // query heads; a multiple of pool.n_head_kv (query head h reads KV head
                       // h / (n_head / n_head_kv))
  // The KV pools' layout, from the cache that owns them (PagedKvCache::layout()): KV heads,
  // head_dim (multiple of 4; 8, 64, 128 tested), tokens per block, row format and row bytes.
  // n_blocks is not used.
  kv::KvPoolLayout pool;
  float scale = 0.0f;  // score scale; 0 means 1 / sqrt(head_dim)
  // Sliding window in tokens: a token at position p attends to [p - window + 1, p] (llama.cpp's
  // standard SWA); 0: the whole context. The kernels start at the window's first position, so a
  // window layer's cache may release the blocks before it (KvBlockManager with the same window).
  int32_t window = 0;
  // The V pool's row format (PagedKvCache::layout(l, KvPart::kV)); unset: pool.format, which is
  // the K pool's. K and V formats are chosen separately; the rest of the layout is shared.
  std::optional<kv::KvFormat> v_format;

  kv::KvFormat k_row_format() const { return pool.format; }
  kv::KvFormat v_row_format() const { return v_format.value_or(pool.format); }
};

// Work decomposition; defaults per device type (default_attention_tuning), overridable for tuning.
struct AttentionTuning {
  int32_t prefill_rows = 16;      // query tokens per prefill work-group
  int32_t prefill_row_items = 1;  // work items per query row (divides head_dim)
  int32_t prefill_kv_tile = 16;   // KV tokens per prefill tile (divides block_size or is a
                                  // multiple of it)
  bool decode_rows = false;       // decode by attention_decode_rows (one item streams whole rows
                                  // with vector loads: CPUs) instead of the work-group kernel
  int32_t decode_items = 1;       // decode work-group size (work-group kernel)
  int32_t decode_tile = 64;       // KV tokens per decode step (work-group kernel: == decode_items)
  int32_t reduce_items = 1;       // reduce work-group size
  // Decode value pass: 0, each row accumulated into its outputs as it comes (work-group kernel:
  // an item owns 4 (head, channel) outputs); 1, shared by the query heads of a KV head (work-group
  // kernel: an item owns 4 channels of every head over a share of the tile's tokens, so a value is
  // read and decoded once per group; row kernel: a block of channels of every head is kept in
  // registers across a run of rows). Same values up to the summation order.
  int32_t decode_variant = 0;
  // TurboQuant centroids by table instead of a select tree: lane-wise reads of the codebook vector
  // in the codec on CPUs, a local-memory copy in the work-group decode kernel (variant 1). Same
  // values.
  bool decode_lut = false;
  // Decode work-groups aimed at per compute unit (the split-K chunk count follows: at most
  // 16 times this many chunks per (token, KV head)).
  int32_t decode_groups_per_cu = 4;
  // Split-K decode in one launch: the last work-group of a (token, KV head) to write its partials
  // combines the chunks (an atomic counter per (token, KV head), reset by that work-group), so no
  // reduce launch runs. Used for launches of at most kFusedReduceTokens tokens.
  bool fused_reduce = true;
  // The decode kernels built with the finish (AttentionOp::decode's DecodeFinish): its own
  // program, kept out of the others (PoCL builds the work-group decode kernels with it about twice
  // as slowly), which serve decode only without a DecodeFinish.
  bool decode_finish = false;
};
// Decode tokens one launch may have for the fused combine (AttentionTuning::fused_reduce): the
// counters an AttentionOp holds; a larger decode batch takes the reduce launch.
inline constexpr int32_t kFusedReduceTokens = 1024;
AttentionTuning default_attention_tuning(const Device& device, const AttentionConfig& config);

// Bad launch arguments (token range outside the batch, workspace too small).
struct AttentionError : TesseraError {
  using TesseraError::TesseraError;
};
// A shape or tuning that cannot run on a device (local memory, work-group size, head size).
struct AttentionUnsupported : AttentionError {
  using AttentionError::AttentionError;
};

// How a decode launch splits the context: n_chunks work-groups per (token, KV head), each over
// chunk_tokens positions.
struct DecodeSplit {
  int32_t n_chunks = 1;
  int32_t chunk_tokens = 0;
};

// Launches are asynchronous on device.queue(): they wait for ev.wait, and when ev.done is not null
// store there a new event (the caller owns it) of their last kernel. No allocation, no program
// lookup, no blocking inside a launch. Not thread-safe: one op object per engine thread (kernel
// objects hold arguments).
//
// Token ranges: every launch works on batch tokens [first_token, first_token + n_tokens) of the
// KvBatchView; q / out / k_new / v_new rows are indexed by the batch token (row t at element
// offset + t * row length), so one forward step's projections are passed whole.
class AttentionOp {
 public:
  // Builds the program for this shape (cached by the device's program cache). Throws
  // AttentionUnsupported on a shape or tuning the device cannot run.
  AttentionOp(const Device& device, const AttentionConfig& config,
              std::optional<AttentionTuning> tuning = std::nullopt);

  const AttentionConfig& config() const { return config_; }
  const AttentionTuning& tuning() const { return tuning_; }
  float scale() const { return scale_; }

  // (a) Stores K and V of the tokens (f32 [batch token][n_head_kv][head_dim], after RoPE) into
  // their slots (batch.token_slot; a slot < 0 is skipped) in the layer's pools, in the cache's
  // format.
  void write_kv(const kv::KvBatchView& batch, const kv::KvLayerView& layer, cl_mem k_new,
                uint32_t k_offset, cl_mem v_new, uint32_t v_offset, int32_t first_token,
                int32_t n_tokens, const Events& ev = {});

  // (a') The projections' last step in one launch: q and k heads get the optional per-head
  // RMSNorm (q_norm / k_norm weights, head_dim floats; both null: no norm) and RoPE at the token's
  // position (batch.token_pos); q is written packed to q_out, k and v are stored into the tokens'
  // slots as write_kv does. Token t's q head h is read at element
  // qkv_offset + t * qkv.token_stride + h * head_dim, its k and v heads from columns k_col / v_col.
  struct QkvSource {
    cl_mem buf = nullptr;
    uint32_t offset = 0;
    uint32_t token_stride = 0;  // floats between tokens' rows
    uint32_t k_col = 0, v_col = 0;
  };
  // RoPE angles as reference::rope: theta_i = freq_scale * pos * freq_base^(-2i/n_rot) /
  // freq_factors[i], blended by YaRN when rope.yarn is enabled.
  struct QkvRope {
    uint32_t n_rot = 0;  // even, <= head_dim; 0: no RoPE (Granite 4.0-H's attention layers)
    float freq_base = 10000.0f;
    bool neox = false;
    float freq_scale = 1.0f;        // linear scaling and YaRN: 1 / rope.scaling.factor; > 0
    cl_mem freq_factors = nullptr;  // n_rot/2 floats (Llama 3's rope_freqs.weight) or null
    reference::RopeYarn yarn;       // YaRN's blend and magnitude (default: off)
  };
  void qkv_finish(const kv::KvBatchView& batch, const kv::KvLayerView& layer, const QkvSource& src,
                  cl_mem q_norm, cl_mem k_norm, float eps, const QkvRope& rope, cl_mem q_out,
                  uint32_t q_out_offset, int32_t first_token, int32_t n_tokens,
                  const Events& ev = {});

  // (b) Causal attention of the tokens (q f32 [batch token][n_head][head_dim]) over their
  // sequences' KV (the config's window of it), written to out (same layout). Flash-style: query
  // tiles of consecutive tokens of one sequence share each K/V tile. Any tokens work; it is the
  // fast path for prefill chunks.
  // `sinks` (gpt-oss; null: none): n_head f32 sink logits, each in its head's softmax max and
  // denominator (reference::causal_attention).
  void prefill(const kv::KvBatchView& batch, const kv::KvLayerView& layer, cl_mem q,
               uint32_t q_offset, cl_mem out, uint32_t out_offset, int32_t first_token,
               int32_t n_tokens, const Events& ev = {}, cl_mem sinks = nullptr);

  // (c) Same result by split-K: each token's context is cut into chunks scored by separate
  // work-groups, then a reduce combines them (the last work-group of each (token, KV head) in the
  // same launch when tuning().fused_reduce and n_tokens <= kFusedReduceTokens; else a launch). The
  // fast path for decode tokens (one per sequence). `workspace` holds at least
  // decode_workspace_bytes(n_tokens, C) bytes, C the batch's context_capacity (max_context when 0).
  // Chunk sizes are read from the batch's meta buffer. `sinks` as prefill's (applied by the
  // reduce).
  // With `finish` (decode steps only: every token a different sequence's one new token), the
  // launch also does qkv_finish's work: each work-group reads its query heads from the q|k|v
  // rows and gives them the norms and RoPE itself, and the one whose chunk holds the token's
  // position stores the token's finished k and v into its slot before reading its keys; `q` is
  // not read. Same values as qkv_finish then decode (up to the norms' summation order), one
  // launch fewer per layer. Needs an op built with AttentionTuning::decode_finish.
  struct DecodeFinish {
    QkvSource src;
    cl_mem q_norm = nullptr, k_norm = nullptr;  // both or neither
    float eps = 0.0f;
    QkvRope rope;
  };
  void decode(const kv::KvBatchView& batch, const kv::KvLayerView& layer, cl_mem q,
              uint32_t q_offset, cl_mem out, uint32_t out_offset, int32_t first_token,
              int32_t n_tokens, cl_mem workspace, size_t workspace_bytes, const Events& ev = {},
              cl_mem sinks = nullptr, const DecodeFinish* finish = nullptr);

  // The decode as a phase of another program's launch (MatmulOp::run_route_tail with
  // RouteTail::Ffn::attention: matmul.cl's matmul_route_ffn built from route_attention.cl with
  // program_options()): decode()'s work for one token with `finish`, its combine fused, by
  // attention_decode_rows's units. Whether this op has that form (AttentionTuning's decode_rows,
  // decode_finish and fused_reduce):
  bool can_decode_phase() const;
  // Sets decode()'s arguments for that token (batch token 0) on k from argument `first` on, with
  // decode()'s checks; returns the phase's units (n_chunks x n_head_kv, unit u the chunk
  // u % n_chunks of KV head u / n_chunks).
  uint32_t set_decode_phase_args(cl_kernel k, uint32_t first, const kv::KvBatchView& batch,
                                 const kv::KvLayerView& layer, cl_mem out, uint32_t out_offset,
                                 cl_mem workspace, size_t workspace_bytes, cl_mem sinks,
                                 const DecodeFinish& finish);
  // The -D options this op's programs are built with.
  const std::string& program_options() const { return options_; }

  DecodeSplit decode_split(int32_t n_tokens, int32_t max_context) const;
  // Workspace for any decode launch of at most `max_tokens` tokens and `max_context` context
  // (allocate once per engine, at the batch and context limits).
  size_t decode_workspace_bytes(int32_t max_tokens, int32_t max_context) const;

 private:
  const Device* device_;
  AttentionConfig config_;
  AttentionTuning tuning_;
  float scale_;
  std::string options_;
  ClKernel write_, finish_, finish_rows_, prefill_, decode_, decode_rows_, decode_shared_, reduce_;
  // decode()'s checks and its decode kernel's arguments on k from `first` (fused: the combine by
  // the last chunk); returns the split.
  DecodeSplit decode_args(cl_kernel k, uint32_t first, const kv::KvBatchView& b,
                          const kv::KvLayerView& layer, cl_mem q, uint32_t q_offset, cl_mem out,
                          uint32_t out_offset, int32_t first_token, int32_t n_tokens,
                          cl_mem workspace, size_t workspace_bytes, cl_mem sinks,
                          const DecodeFinish* finish, bool fused);
  void check_decode(cl_mem sinks, const DecodeFinish* finish, int32_t n_tokens) const;
  // qkv_finish_rows's inverse frequencies per (n_rot, freq_base), made at first use (`none`: the
  // buffer to pass when n_rot is 0).
  struct InvFreqTable {
    uint32_t n_rot;
    float freq_base;
    ClMem buf;
  };
  std::vector<InvFreqTable> inv_freq_;
  cl_mem inv_freq_table(uint32_t n_rot, float freq_base, cl_mem none);
  // qkv_finish's checks of its source and RoPE (`what` names the caller in the error).
  void check_finish(const QkvSource& src, cl_mem q_norm, cl_mem k_norm, const QkvRope& rope,
                    int32_t n_tokens, const char* what) const;
  // Prod keys (turbo3p / turbo4p): the cache's QJL matrix, head_dim^2 floats
  // (reference::turbo::cache_qjl_matrix); other formats pass any buffer for the unread argument.
  ClMem qjl_;
  cl_mem qjl_or(cl_mem other) const { return qjl_ ? qjl_.get() : other; }
  // The fused combine's counters: kFusedReduceTokens x n_head_kv int32, zero between launches.
  ClMem counters_;
};

}  // namespace tessera::ops
