// Matmul over weights in ggml formats (F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q4_K Q5_K Q6_K TQ1_0 TQ2_0
// MXFP4) with f32 activations: y[t][r] = sum_c W[r][c] * x[t][c]; dense and stacked-expert (MoE)
// launches.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "devices/device.h"
#include "host/gguf/tensor_type.h"
#include "host/kv/kv_view.h"
#include "host/ops/device/attention.h"
#include "host/ops/device/repack.h"
#include "host/ops/reference/routing.h"

namespace tessera::ops {

// Kernel shape (cl_kernels/matmul.cl explains each): lanes per row group, row groups per work
// group, rows per work item, vector accumulators. CPUs: lanes 1 (each work item streams whole
// rows); GPUs: a few warps' worth of lanes per row, coalesced chunk reads, local-memory reduction.
struct MatmulVariant {
  int lanes = 1;
  int wg_rows = 16;
  int rows_per_item = 1;
  bool vec_acc = true;
  // Prefill with at least this many tokens goes to dequantize + CLBlast SGEMM; 0 = never.
  int clblast_min_tokens = 0;
  // Dense launches (quantized weights) with at least this many tokens go to the tiled GEMM
  // (matmul_gemm.cl with identity pairs), before CLBlast; 0 = never.
  int tiled_gemm_min_tokens = 0;
  // Expert launches whose pairs are sorted by expert and average at least this many pairs per
  // expert go to the tiled GEMM (matmul_gemm.cl); 0 = never.
  int expert_gemm_min_run = 0;
  // The tiled GEMM's shape (matmul_gemm.cl's GT_* macros): 256 work items, gemm_tx of them along
  // pairs; each item computes gemm_tr rows x gemm_tp pairs; a K step is gemm_kc 32-column chunks.
  int gemm_tr = 4, gemm_tp = 4, gemm_tx = 8, gemm_kc = 2;
  // One-token dense launches (decode's GEMV) of rows up to gemv_max_cols columns: rows per work
  // item of their own kernel (matmul_t1 built apart); 0: rows_per_item.
  int gemv_rows_per_item = 0;
  int gemv_max_cols = 1024;
  // One-token dense launches and the one-launch expert FFN take x in 8-bit blocks (Q8_0-like
  // activations, integer dot products) where the program can: Q4_0 on CPUs whose compiler targets
  // x86 with AVX-512BW or AVX2 (matmul_formats.clh, X_Q8). MatmulOp::x_q8 says whether it did.
  bool x_q8 = false;
  // With x_q8: the integer dot products through AVX-512 VNNI's vpdpbusd (inline assembly; only
  // where this host's CPU, the device's, has it). MatmulOp::x_q8_vnni says whether the program did.
  bool x_q8_vnni = false;
  // With x_q8_vnni: rows per work item of the prefill tiles on 8-bit x (matmul.cl's X_Q8_TILES_ON;
  // 1 or even up to 8 where SwiGLU is in the gate|up launch: half gate rows, half their up rows).
  int xq_rows_per_item = 1;
  static constexpr int kXq8MaxGroups = 128;  // runs of four blocks: rows up to 16,384 columns
  int gemv_rows() const { return gemv_rows_per_item > 0 ? gemv_rows_per_item : rows_per_item; }
  MatmulVariant gemv() const {
    MatmulVariant d = *this;
    d.rows_per_item = gemv_rows();
    return d;
  }
  MatmulVariant xq() const {  // the shape the xq tiles' launches take
    MatmulVariant d = *this;
    d.rows_per_item = xq_rows_per_item;
    return d;
  }
  void set_gemm_tile(const std::array<int, 4>& tile) {  // {tr, tp, tx, kc}
    gemm_tr = tile[0];
    gemm_tp = tile[1];
    gemm_tx = tile[2];
    gemm_kc = tile[3];
  }
  int expert_gemm_rows() const { return 256 / gemm_tx * gemm_tr; }
  int expert_gemm_pairs() const { return gemm_tx * gemm_tp; }
  uint64_t expert_gemm_local_bytes() const;
  std::string str() const;                 // "lanes=32 wg_rows=4 rpw=1 vec=0 clblast>=128"
  std::string build_options() const;       // the -D macros
  std::string gemm_build_options() const;  // the tiled GEMM's GT_* macros
};

// Defaults by device capability (measured with bench/kernels/matmul_bench, see its README).
MatmulVariant default_matmul_variant(const DeviceInfo& info, gguf::TensorType t);

// Whether the tiled expert GEMM (256-item work groups and the tile's local memory; any tile of
// expert_gemm_tiles() when no variant is given) fits the device.
bool expert_gemm_fits(const DeviceInfo& info);
bool expert_gemm_fits(const DeviceInfo& info, const MatmulVariant& v);

// The tile shapes (gemm_tr, gemm_tp, gemm_tx, gemm_kc) the defaults choose among, each with a
// portability-matrix case; the first is MatmulVariant's default.
const std::vector<std::array<int, 4>>& expert_gemm_tiles();

// A weight uploaded to one device in the repacked layout. Move-only; owns its buffers.
struct DeviceWeight {
  const WeightFormat* format = nullptr;
  gguf::TensorType type{};
  int64_t rows = 0, cols = 0, n_expert = 1;
  int64_t blocks_per_row = 0;
  uint64_t source_bytes = 0;  // ggml bytes: what a GEMV streams (for GB/s figures)
  uint64_t device_bytes = 0;  // bytes held on the device
  ClMem body, head;           // head empty for formats without one (the kernels get body twice)
};

// One per (device, matmul family). Programs are built per format on the first upload of that
// format. Launches are asynchronous on device.queue(), allocate nothing and are not thread-safe
// (kernel objects hold arguments): drive one MatmulOp from one thread, as its queue.
// Where MatmulOp::run writes: y rows `ldy` floats apart (0: the weight's rows), and whether the
// product is added to y (accumulate) or stored.
struct MatmulOutput {
  size_t ldy = 0;
  bool accumulate = false;
};

// The MoE combine run by a down projection's launch (MatmulOp::run_experts_combine): for each token
// t < n_tokens, out[t] (+)= sum over its pairs p in [offsets[t], offsets[t+1]) of weights[p] times
// the launch's output row p (moe_combine's sum), then, when norm_w is set, xn[t] = out[t] /
// sqrt(mean(out[t]^2) + eps) * norm_w (moe_combine_norm's). Pairs in token order; pair_token[p]
// is pair p's token. int32 offsets (n_tokens + 1) and pair_token, f32 weights; offsets 0.
struct ExpertCombine {
  cl_mem out = nullptr;  // [n_tokens][rows]: the residual stream (accumulate) or a partial sum
  bool accumulate = true;
  cl_mem weights = nullptr, offsets = nullptr, pair_token = nullptr;
  uint32_t n_tokens = 0;
  cl_mem norm_w = nullptr;  // null: no norm
  float eps = 0;
  cl_mem xn = nullptr;
};

// The start of the MoE block that follows a dense launch, run by that launch
// (MatmulOp::run_route_tail): for each token t, xn[t] = RMSNorm(y[t]) * norm_w (y: the launch's
// output rows, the residual stream), the router's logits of xn[t] (an F32 router: n_expert rows of
// router_ld floats, a repacked F32 weight's body) and their top-k routing into ids / weights [t][k]
// (RoutingOps::norm_route's results, from one launch fewer).
struct RouteTail {
  cl_mem norm_w = nullptr;
  float eps = 0;
  cl_mem xn = nullptr;
  cl_mem router = nullptr;
  uint32_t router_ld = 0, n_expert = 0;
  reference::RoutingConfig routing;
  cl_mem ids = nullptr, weights = nullptr;
  // With ffn (MatmulOp::can_route_ffn; one token): the MoE layer's experts in the same launch too,
  // on x = xn (one row), pairs p = j of expert ids[j] (pair_token: zeros): gate|up units, then
  // down units of output rows summing the pairs (cl_kernels/matmul.cl), and the combine's norm.
  struct Ffn {
    const DeviceWeight* gate_up = nullptr;
    const DeviceWeight* down = nullptr;
    cl_mem pair_token = nullptr;
    ExpertCombine combine;
    int slices = 0;  // > 0 forces that many gate|up slices (of ff's runs of 32 rows)
    // With next (MatmulOp::can_route_next; the combine's norm on): next . combine.xn into next_y
    // (next->rows floats) in the same launch, the next layer's input projection.
    const DeviceWeight* next = nullptr;
    cl_mem next_y = nullptr;
    // With attention (and next): the next layer's decode attention of the token as the launch's
    // last phase, AttentionOp::decode's work with its finish reading the q|k|v row next_y (op:
    // AttentionOp::can_decode_phase), into out. The launch's x may be `out`: the phase starts
    // after every work group has read x.
    struct Attention {
      AttentionOp* op = nullptr;
      kv::KvBatchView batch;
      kv::KvLayerView layer;
      cl_mem out = nullptr;
      uint32_t out_offset = 0;
      cl_mem workspace = nullptr;
      size_t workspace_bytes = 0;
      cl_mem sinks = nullptr;  // null: none
      AttentionOp::DecodeFinish finish;
    };
    const Attention* attention = nullptr;
  };
  const Ffn* ffn = nullptr;
};

class MatmulOp {
 public:
  // Tokens a combining launch takes (its counters: one int32 per token).
  static constexpr int kCombineMaxTokens = 1024;
  explicit MatmulOp(const Device& device);
  // Forces a kernel variant for every format (benchmarks and tuning).
  MatmulOp(const Device& device, const MatmulVariant& variant);
  ~MatmulOp();
  MatmulOp(const MatmulOp&) = delete;
  MatmulOp& operator=(const MatmulOp&) = delete;

  // Repacks and uploads `n_expert` stacked matrices of rows x cols (ggml 2D [cols, rows] or 3D
  // [cols, rows, n_expert]) given as ggml blocks. Blocking. Throws TesseraError on bad type/shape,
  // ClError when the device cannot hold it.
  DeviceWeight upload(gguf::TensorType type, int64_t rows, int64_t cols, const void* data,
                      int64_t n_expert = 1) const;
  // The same from an already repacked weight (the device copy of `rw`, written blocking). A
  // caller that rewrites the weight later (MoeFfn's streamed experts) writes rw's layout again:
  // body bytes at 0, head bytes from rw.head_offset_bytes; with `write` false the buffers are
  // only allocated for it (their contents undefined until then).
  DeviceWeight upload_repacked(gguf::TensorType type, const RepackedWeight& rw,
                               bool write = true) const;

  // y[y_offset + t * rows + r] = sum_c W[r][c] * x[x_offset + t * cols + c], t < n_tokens. Offsets
  // in floats. Dense weights only (n_expert 1). `done` receives the event of the last command.
  // Output options: y rows `ldy` floats apart (0: rows; >= rows), and `accumulate` adds the
  // product to y (a residual connection in the same launch) instead of storing it.
  using Output = MatmulOutput;
  void run(const DeviceWeight& w, cl_mem x, size_t x_offset, cl_mem y, size_t y_offset,
           int n_tokens, const std::vector<cl_event>& wait = {}, cl_event* done = nullptr,
           Output out = MatmulOutput{}) const;

  // Every selected expert of a layer in one launch: for pair i < n_pairs, y row i (rows floats at
  // y_offset + i * rows) = W[pair_expert_ids[i]] times x row pair_token_ids[i] (int32 device
  // buffers; x has x_rows rows of cols floats). Pairs sorted by expert share weight reads (tiles of
  // up to 8 consecutive pairs with the same expert). An out-of-range id gives a NaN row.
  // x_swiglu: x rows are [gate | up] (2 * cols floats) and each input row is silu(gate) * up
  // (SwiGLU folded into the down projection: one launch less). That program is built by
  // prepare_swiglu (call it at load time) or at the first such launch.
  // sorted_max_run > 0 promises the pairs are sorted by expert (ids outside the range last) and
  // no expert has more than that many pairs (a step's token count): long runs then go to the
  // tiled expert GEMM (MatmulVariant::expert_gemm_min_run). 0: no promise.
  void run_experts(const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows, cl_mem y,
                   size_t y_offset, cl_mem pair_token_ids, cl_mem pair_expert_ids, int n_pairs,
                   const std::vector<cl_event>& wait = {}, cl_event* done = nullptr,
                   bool x_swiglu = false, int sorted_max_run = 0) const;
  void prepare_swiglu(gguf::TensorType type) const;

  // Gate and up stacked in one weight (w.rows = 2 ff per expert: ff gate rows, then ff up rows):
  // y row p (ff floats at y_offset + p * ff) = silu(gate x) * up x for pair p, SwiGLU applied in
  // the launch that computes them (no activation launch; no [gate | up] rows written). w.rows must
  // be even. Pairs and ids as run_experts. Program built by prepare_glu or at the first launch;
  // needs the format's variant to have one row per work item and an even wg_rows (can_glu: the
  // CPU shape; GPUs fold SwiGLU into down instead).
  void run_experts_glu(const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows, cl_mem y,
                       size_t y_offset, cl_mem pair_token_ids, cl_mem pair_expert_ids, int n_pairs,
                       const std::vector<cl_event>& wait = {}, cl_event* done = nullptr) const;
  void prepare_glu(gguf::TensorType type) const;
  bool can_glu(gguf::TensorType type) const;

  // Rows [row0, row0 + n_rows) of the stacked matrices (expert e's row r is e * rows + r) as f32,
  // row-major with `cols` floats per row, at out_offset floats.
  void dequantize(const DeviceWeight& w, int64_t row0, int64_t n_rows, cl_mem out,
                  size_t out_offset, const std::vector<cl_event>& wait = {},
                  cl_event* done = nullptr) const;

  // run_experts (x_swiglu as there; plain tile kernels, no tiled GEMM) with the MoE combine in
  // the same launch: the last work group to finish a token's rows combines them (and norms the
  // result), so no combine launch follows. The output rows still land in y (rows floats per pair).
  // Needs can_combine(w.type) and n_tokens <= kCombineMaxTokens. Program and counters built by
  // prepare_combine or at the first launch.
  void run_experts_combine(const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows, cl_mem y,
                           size_t y_offset, cl_mem pair_token_ids, cl_mem pair_expert_ids,
                           int n_pairs, bool x_swiglu, const ExpertCombine& combine,
                           const std::vector<cl_event>& wait = {}, cl_event* done = nullptr) const;
  void prepare_combine(gguf::TensorType type, bool x_swiglu) const;
  // The format's work group is a power of two (the norm's reduction).
  bool can_combine(gguf::TensorType type) const;

  // A MoE layer's experts of a decode-sized step in one launch (cl_kernels/matmul.cl's
  // experts_ffn): for pair p, h = silu(gate x) * up x from gate_up (rows = 2 ff per expert, as
  // run_experts_glu's), its down product, and the combine as run_experts_combine's (no pair rows
  // are written). Each pair's ff is cut into slices that run as work groups of their own (enough
  // to occupy the device's compute units), each adding its share of the down rows; the token's
  // last work group sums them. Needs can_expert_ffn and n_pairs <= kExpertFfnMaxPairs; the
  // scratch (h and the slices' sums) is allocated by prepare_expert_ffn, which also builds the
  // program. Meant for CPUs (one work item per work group), where each launch is a fork/join
  // over every thread: two launches per layer become one.
  static constexpr int kExpertFfnMaxPairs = 64;
  static constexpr int kExpertFfnMaxSlices = 16;
  bool can_expert_ffn(const DeviceWeight& gate_up, const DeviceWeight& down) const;
  void prepare_expert_ffn(const DeviceWeight& gate_up, const DeviceWeight& down) const;
  // The slices a launch of n_pairs uses by default.
  int expert_ffn_slices(const DeviceWeight& down, int n_pairs) const;
  // slices > 0 forces that many (at most kExpertFfnMaxSlices and down's blocks per row).
  void run_expert_ffn(const DeviceWeight& gate_up, const DeviceWeight& down, cl_mem x,
                      size_t x_offset, int x_rows, cl_mem pair_token_ids, cl_mem pair_expert_ids,
                      int n_pairs, const ExpertCombine& combine, int slices = 0,
                      const std::vector<cl_event>& wait = {}, cl_event* done = nullptr) const;
  const MatmulVariant& variant(gguf::TensorType t) const;
  // Whether one-token dense launches (and the one-launch expert FFN) of type t quantize x to
  // 8-bit blocks here (MatmulVariant::x_q8, where the device's compiler offers the integer dot
  // products): asked of the built program once (a launch of matmul_info), then kept.
  bool x_q8(gguf::TensorType t) const;
  // Whether those launches use AVX-512 VNNI (MatmulVariant::x_q8_vnni; asked with x_q8).
  bool x_q8_vnni(gguf::TensorType t) const;
  // Whether run() of n_tokens, and run_experts / run_experts_glu of n_pairs over n_expert
  // experts (not x_swiglu), quantize x to 8-bit blocks first (the prefill tiles of matmul.cl's
  // X_Q8_TILES_ON: Q4_0 and Q8_0 with x_q8 and VNNI, where the program has them). The checks' reference
  // then takes the same x (quantize_x_q8 without the one-token path's limit).
  bool dense_on_xq(gguf::TensorType t, int n_tokens) const;
  bool experts_on_xq(gguf::TensorType t, int n_pairs, int64_t n_expert, bool x_swiglu,
                     int sorted_max_run = 0) const;
  const Device& device() const { return device_; }
  // run() of a decode-sized step (matmul tile kernels only) with the MoE block's routing in the
  // same launch: the work groups add partial router sums and squares of their rows, the last one
  // to finish a token routes it and norms its row (cl_kernels/matmul.cl's ROUTE_TAIL). Needs
  // can_route_tail and n_tokens <= kRouteTailMaxTokens; program, counters and the partials'
  // scratch are built by prepare_route_tail (at load time) or at the first launch.
  static constexpr int kRouteTailMaxTokens = 64;
  static constexpr uint32_t kRouteTailMaxExperts = 512;
  bool can_route_tail(gguf::TensorType type, uint32_t n_expert) const;
  void prepare_route_tail(gguf::TensorType type, int64_t rows, uint32_t n_expert) const;
  void run_route_tail(const DeviceWeight& w, cl_mem x, size_t x_offset, cl_mem y, size_t y_offset,
                      int n_tokens, Output out, const RouteTail& route,
                      const std::vector<cl_event>& wait = {}, cl_event* done = nullptr) const;
  // run_route_tail of one token with route.ffn: the output projection, its routing tail and the
  // layer's experts (run_expert_ffn's work) in one launch (cl_kernels/matmul.cl's
  // matmul_route_ffn). Needs a device whose launches run its join (runs_joins), w's type in the
  // CPU shape (one lane per row) or the GPU shape (lanes a power of two, no separate GEMV, float
  // x), the routing tail (can_route_tail), the expert FFN (can_expert_ffn) in w's format and down
  // mapping back to w's rows; prepare_route_ffn builds its program and scratch (at load time, or
  // at the first launch). (w: `type`, rows x cols.)
  static bool runs_joins(const DeviceInfo& info);
  bool can_route_ffn(gguf::TensorType type, int64_t rows, int64_t cols, uint32_t n_expert,
                     const DeviceWeight& gate_up, const DeviceWeight& down) const;
  // Whether such a launch can also run `next` (the next layer's input projection, rows x `rows`,
  // on the combine's normed row): one dense matrix of `type`.
  bool can_route_next(gguf::TensorType type, int64_t rows, const DeviceWeight& next) const;
  void prepare_route_ffn(gguf::TensorType type, int64_t rows, int64_t cols, uint32_t n_expert,
                         const DeviceWeight& gate_up, const DeviceWeight& down) const;

 private:
  struct Kernels;
  Kernels& kernels(gguf::TensorType t) const;
  // Enqueues `k` over row groups x tiles of `tile` tokens/pairs (the layout every matmul kernel
  // uses) of a `rows` x `cols` weight.
  void enqueue_row_tiles(cl_kernel k, const MatmulVariant& v, int64_t rows, int64_t cols,
                         int n_items, int tile, const std::vector<cl_event>& wait,
                         cl_event* done) const;
  cl_kernel gemm_kernel(Kernels& ks) const;  // matmul_gemm.cl's, built at the first use
  // matmul_route_ffn of route_attention.cl with op's decode (Kernels::route_attn), built at the
  // first use.
  cl_kernel route_attention_kernel(Kernels& ks, gguf::TensorType type, bool gemv,
                                   const AttentionOp& op) const;
  // The ROUTE_FFN programs' build options for w's type in matmul_t1's shape or the gemv's.
  std::string route_ffn_options(const Kernels& ks, gguf::TensorType type, bool gemv) const;
  void alloc_combine_counters() const;       // combine_counters_, zeroed (caller holds mutex_)
  // The expert FFN's h and partial sums (and the combine's counters) for down's shape.
  void alloc_expert_ffn_scratch(const DeviceWeight& down) const;
  void run_dense_gemm(Kernels& ks, const DeviceWeight& w, cl_mem x, size_t x_offset, cl_mem y,
                      size_t y_offset, int n_tokens, const std::vector<cl_event>& wait,
                      cl_event* done, MatmulOutput out) const;
  void run_experts_gemm(Kernels& ks, const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows,
                        cl_mem y, size_t y_offset, cl_mem pair_token_ids, cl_mem pair_expert_ids,
                        int n_pairs, int max_run, const std::vector<cl_event>& wait,
                        cl_event* done) const;
  // An expert launch of kernel k (a tile of `tile` pairs; xq: an experts_xq kernel, after
  // quantize_xq of x).
  void run_expert_tiles(Kernels& ks, cl_kernel k, bool xq, const DeviceWeight& w, cl_mem x,
                        size_t x_offset, int x_rows, cl_mem y, size_t y_offset,
                        cl_mem pair_token_ids, cl_mem pair_expert_ids, int n_pairs, int tile,
                        const std::vector<cl_event>& wait, cl_event* done) const;
  // Whether run_experts takes the tiled expert GEMM (sorted pairs, runs long enough).
  bool takes_expert_gemm(const MatmulVariant& v, int n_pairs, int64_t n_expert,
                         int sorted_max_run) const;
  // Enqueues matmul.cl's quantize_xq of x_rows rows of x (w's columns) into the xq buffer (grown
  // as needed) after `wait`; returns the buffer. Kernels::xq_tiles only.
  cl_mem quantize_xq(Kernels& ks, const DeviceWeight& w, cl_mem x, size_t x_offset, int x_rows,
                     const std::vector<cl_event>& wait) const;
  void run_clblast(const DeviceWeight& w, cl_mem x, size_t x_offset, cl_mem y, size_t y_offset,
                   int n_tokens, const std::vector<cl_event>& wait, cl_event* done,
                   Output out) const;

  const Device& device_;
  bool forced_ = false;
  MatmulVariant forced_variant_;
  mutable std::mutex mutex_;  // guards the lazily built kernel table and scratch (upload time only)
  mutable std::map<gguf::TensorType, std::unique_ptr<Kernels>> kernels_;
  mutable ClMem scratch_;  // f32 slab for the CLBlast path, sized at upload
  // Per-token counters of the combining launches (kCombineMaxTokens int32, zero between launches:
  // each token's last work group resets its own), allocated by the first prepare_combine.
  mutable ClMem combine_counters_;
  // run_expert_ffn's scratch: h (kExpertFfnMaxPairs x ff floats) and the slices' sums
  // (kExpertFfnMaxPairs x kExpertFfnMaxSlices x n_embd), sized by prepare_expert_ffn.
  mutable ClMem ffn_h_, ffn_part_;
  // run_route_tail's per-token counters (kRouteTailMaxTokens, zero between launches) and partials
  // (kRouteTailMaxTokens x work groups x (n_expert + 1) floats), sized by prepare_route_tail.
  mutable ClMem route_counters_, route_part_;
  // matmul_route_ffn's join (11 counters, each on a 64-byte line of its own, cl_kernels/matmul.cl:
  // zero between launches, the last work group resets them), allocated by prepare_route_ffn.
  mutable ClMem ffn_join_;
  mutable size_t route_part_floats_ = 0;
  mutable size_t ffn_h_floats_ = 0, ffn_part_floats_ = 0;
  mutable size_t scratch_bytes_ = 0;
  // quantize_xq's buffer (xq_bytes_), and the smaller ones steps were recorded with.
  mutable ClMem xq_;
  mutable std::vector<ClMem> xq_old_;
  mutable size_t xq_bytes_ = 0;
};

}  // namespace tessera::ops
