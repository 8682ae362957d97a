// Checking the matmul kernels against the scalar reference (dequantize + f32 matmul with double
// sums): test data, the reference, per-format tolerances and one-call checks used by the unit
// tests, the portability-matrix cases and the benchmark.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "devices/device.h"
#include "host/gguf/tensor_type.h"
#include "host/ops/device/matmul.h"

namespace tessera::ops {

// Random but valid ggml blocks of n_mats x rows x cols: random quant bits, fp16 scales of moderate
// size (so sums stay far from overflow), deterministic per seed.
std::vector<uint8_t> random_ggml_weight(gguf::TensorType t, int64_t rows, int64_t cols,
                                        uint32_t seed, int64_t n_mats = 1);

// y[t][r] = sum_c W[r][c] x[t][c] for matrix `mat` of a stacked weight; rows dequantized with
// quant::dequantize_row, sums in double.
std::vector<float> reference_matmul(gguf::TensorType t, int64_t rows, int64_t cols, const void* w,
                                    const float* x, int n_tokens, int64_t mat = 0);

// x as the kernels with MatmulVariant::x_q8 take it (MatmulOp::x_q8): each of n_rows rows of
// `cols` floats in 32-element blocks, d = max|x| (1 / 127), x -> trunc(x (127 / max|x|) +
// copysign(0.5, x)) d (0 where max|x| = 0), for the blocks in runs of four (cols / 128 runs; up to
// kXq8MaxGroups runs, else none, unless any_length: the prefill tiles' xq has no limit); the
// remaining blocks stay as they are.
std::vector<float> quantize_x_q8(const float* x, int64_t cols, int n_rows, bool any_length = false);

// Largest accepted max|got - ref| / max|ref|. The kernels dequantize exactly as ggml does (up to
// fused multiply-add rounding), so the error is f32 summation order: the same bound for every
// format, a little looser for formats whose decode fuses scale and min (Q4_1, Q4_K, Q5_K).
double matmul_tolerance(gguf::TensorType t);

struct MatmulCheck {
  bool pass = false;
  std::string note;  // why it failed
  double max_abs = 0, max_rel = 0, nmse = 0;
  size_t nonfinite = 0;
  bool guard_intact = true;     // nothing written past the output
  double seconds = 0;           // median kernel time (timing only)
  double bytes = 0, flops = 0;  // weight bytes streamed, 2 * rows * cols * tokens
};

// How fast `op`'s one-token matmul kernel streams weights of type t in rows of `cols` columns
// (what a decode step's projections and experts do): a synthetic matrix of about `bytes` bytes
// (random valid blocks, 64 distinct rows repeated), eight launches back to back, the median of
// three such batches by the host clock (the launches' cost included, as in a step). GB/s (1e9)
// of weight bytes. `cols` is rounded up to the format's block. Throws what upload and run throw.
double measure_weight_stream_gbps(const MatmulOp& op, gguf::TensorType t, int64_t cols,
                                  uint64_t bytes);

// Dense: W (rows x cols, type t) times n_tokens random rows; compares with the reference.
MatmulCheck check_matmul(const MatmulOp& op, gguf::TensorType t, int64_t rows, int64_t cols,
                         int n_tokens, bool timing, uint32_t seed = 1);

// Stacked experts: n_expert matrices, n_tokens tokens each routed to top_k distinct experts
// (pairs sorted by expert, as the MoE executor passes them), one run_experts launch.
MatmulCheck check_experts(const MatmulOp& op, gguf::TensorType t, int64_t rows, int64_t cols,
                          int n_expert, int n_tokens, int top_k, bool timing, uint32_t seed = 1,
                          bool x_swiglu = false, bool sorted_promise = false, bool glu_out = false);
// glu_out: the weight is gate | up stacked (rows even) and run_experts_glu's output is compared
// with silu(gate row) * up row of the reference products (rows / 2 floats per pair).

// The down projection with the MoE combine in its launch (MatmulOp::run_experts_combine): pairs
// in token order, n_tokens tokens routed to top_k of n_expert experts, one x row per pair ([gate |
// up] with x_swiglu). Home (shard false): the combine adds into a residual stream and norms it.
// shard: the device holds the even experts only, writes a partial sum, and the last token has no
// pair here. The launch runs twice (the second finds the counters reset by the first); the pair
// rows, the combined rows and the normed rows are compared with the reference.
MatmulCheck check_experts_combine(const MatmulOp& op, gguf::TensorType t, int64_t rows,
                                  int64_t cols, int n_expert, int n_tokens, int top_k,
                                  bool x_swiglu, bool shard, bool timing, uint32_t seed = 1);

// A MoE layer's experts in one launch (MatmulOp::run_expert_ffn): gate|up (2 ff x n_embd per
// expert) and down (n_embd x ff) of type t, n_tokens tokens routed to top_k of n_expert experts,
// pairs in token order; the reference composes reference_matmul (gate, up), SwiGLU,
// reference_matmul (down) and the combine (+ norm at home; shard as check_experts_combine's: the
// even experts only, a partial sum, the last token without a pair). `slices` as run_expert_ffn's
// (0: the default). Runs twice (the counters must be reset by the first); compares the combined and
// normed rows.
MatmulCheck check_expert_ffn(const MatmulOp& op, gguf::TensorType t, int64_t ff, int64_t n_embd,
                             int n_expert, int n_tokens, int top_k, bool shard, int slices,
                             bool timing, uint32_t seed = 1);

// A dense launch with the MoE routing in it (MatmulOp::run_route_tail): W (rows x cols, type t)
// times n_tokens rows added to a residual stream y, then the reference's RMSNorm of y (xn), an F32
// router of n_expert rows (padded stride) over xn in double and reference::route_experts (top_k,
// softmax or sigmoid gating, normalized). Runs twice from the same y (the second launch must find
// the counters reset); compares y, xn and the weights with tolerances and the expert ids exactly.
MatmulCheck check_route_tail(const MatmulOp& op, gguf::TensorType t, int64_t rows, int64_t cols,
                             int n_tokens, int n_expert, int top_k, bool sigmoid, bool timing,
                             uint32_t seed = 1);

// The output projection, its routing tail and the layer's experts in one launch
// (MatmulOp::run_route_tail with RouteTail::Ffn, one token): W (n_embd x cols) times x added to
// a residual y, the routing as check_route_tail's (softmax, top_k of n_expert), the chosen
// experts (gate|up 2 ff x n_embd, down n_embd x ff, type t) as check_expert_ffn's on the routing's
// normed row, their weighted sum added to y, and with next_norm RMSNorm(y) * another weight over
// the normed row (the engine's buffers), and with next_rows > 0 (needs next_norm) a next_rows x
// n_embd matrix of type t times that row (the next layer's input projection). Three launches (the
// join and counters reset by each); compares y, the normed row, the weights, the ids and the
// projection. With attention (RouteTail::Ffn::attention; needs next_rows = kRouteAttentionRows and
// cols = kRouteAttentionCols), that projection is the next layer's q|k|v row (4 query heads of 64,
// 2 KV heads) and the launch runs its decode attention too: Qwen3's q/k norms and NeoX RoPE at
// position 40 over 40 random f16 keys and values in shuffled blocks of 16, into x itself (the
// engine's buffers: the attention's output is the next launch's input), compared with the
// reference's finish and causal attention of the reference's row, and the token's stored k and v.
inline constexpr int64_t kRouteAttentionRows = 512, kRouteAttentionCols = 256;
MatmulCheck check_route_ffn(const MatmulOp& op, gguf::TensorType t, int64_t n_embd, int64_t cols,
                            int64_t ff, int n_expert, int top_k, bool next_norm, int slices,
                            int64_t next_rows, bool attention, bool timing, uint32_t seed = 1);

// Kernel-side dequantization (MatmulOp::dequantize) equals quant::dequantize_row bit for bit up to
// fma rounding: returns max |device - reference| / max |reference| over all rows.
double check_dequantize(const MatmulOp& op, gguf::TensorType t, int64_t rows, int64_t cols,
                        uint32_t seed = 1);

}  // namespace tessera::ops
