// Attention launchers: program options from the shape and tuning, work sizes, decode split policy.
#include "host/ops/device/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "host/ops/device/rope.h"
#include "host/ops/reference/kv_turbo.h"

namespace tessera::ops {

namespace {

// A float as a C99 hex literal with an f suffix (exact in program options).
std::string hex_float(float v) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%af", double(v));
  return buf;
}

// Most chunks per (token, KV head) of a decode launch per decode work-group aimed at per compute
// unit (64 at the default 4): bounds the workspace and the reduce's work.
constexpr int32_t kMaxDecodeChunksPerGroupPerCu = 16;

void launch(const Device& d, cl_kernel k, const size_t (&global)[3], const size_t (&local)[3],
            const Events& ev) {
  enqueue(d, k, 3, global, local, ev);
}

int32_t largest_divisor_at_most(int32_t n, int32_t cap) {
  for (int32_t v = std::min(n, cap); v > 1; --v)
    if (n % v == 0) return v;
  return 1;
}

void check_range(const kv::KvBatchView& b, int32_t first, int32_t n, const char* what) {
  if (first < 0 || n < 0 || int64_t(first) + n > b.n_tokens)
    throw AttentionError(std::string("attention ") + what + ": tokens [" + std::to_string(first) +
                         ", " + std::to_string(int64_t(first) + n) + ") outside the batch's " +
                         std::to_string(b.n_tokens));
}

// A sinks buffer must hold a logit per query head (the kernels read sinks[h]).
void check_sinks(cl_mem sinks, int32_t n_head, const char* what) {
  if (!sinks) return;
  size_t bytes = 0;
  const cl_int err = clGetMemObjectInfo(sinks, CL_MEM_SIZE, sizeof(bytes), &bytes, nullptr);
  if (err != CL_SUCCESS)
    throw AttentionError(std::string("attention ") + what + ": sinks is not a valid buffer (" +
                         cl_error_name(err) + ")");
  if (bytes < size_t(n_head) * sizeof(float))
    throw AttentionError(std::string("attention ") + what + ": sinks holds " +
                         std::to_string(bytes / sizeof(float)) + " floats, " +
                         std::to_string(n_head) + " heads need one each");
}

// Floats a query head takes in the kernels' local memory (K_QDIM): prod keys add its projection.
uint64_t query_floats(const AttentionConfig& config) {
  const bool prod = kv::kv_format_traits(config.k_row_format()).turbo_prod;
  return uint64_t(config.pool.head_dim) * (prod ? 2 : 1);
}
// Local memory of the prefill and the work-group decode kernels (static __local arrays of
// attention.cl; every kernel of the program must fit, used or not).
uint64_t prefill_local_bytes(const AttentionConfig& config, const AttentionTuning& t) {
  const auto& c = config.pool;
  const uint64_t qd = query_floats(config);
  // qs (rows padded by one float on GPUs), ks (padded), vs, ss, rseq + rpos, and with several
  // items per row redm + reds (one float per item each).
  const uint64_t rows = uint64_t(t.prefill_rows), kt = uint64_t(t.prefill_kv_tile);
  const uint64_t state = t.prefill_row_items > 1 ? 2ull * rows * uint64_t(t.prefill_row_items) : 0;
  return 4ull *
         (rows * (qd + 1) + kt * (qd + 1) + kt * c.head_dim + rows * kt + 2ull * rows + state);
}
uint64_t decode_local_bytes(const AttentionConfig& config, const AttentionTuning& t) {
  const auto& c = config.pool;
  const uint64_t group = uint64_t(std::max(1, config.n_head / std::max(1, c.n_head_kv)));
  // qs, ss, red, rows, the centroid table of attention_decode_shared (30 floats) and the
  // token's k and v heads (DecodeFinish).
  return 4ull *
         (group * (query_floats(config) + t.decode_tile + t.decode_items) +
          uint64_t(t.decode_tile) + 32 + (t.decode_finish ? 2ull * uint64_t(c.head_dim) : 0));
}

// Shrinks a tuning until its work-groups and local memory fit the device's limits: the KV tile
// first (next smaller divisor of block_size), then the query rows per tile, then the work-group
// decode's tile. What cannot shrink further is left for the constructor to report.
void fit_to_device(const Device& device, const AttentionConfig& config, AttentionTuning& t) {
  const auto& c = config.pool;
  const uint64_t local_max = device.info().local_mem_bytes;
  const uint64_t wg_max = device.info().max_group_items();
  while (prefill_local_bytes(config, t) > local_max ||
         uint64_t(t.prefill_rows) * t.prefill_row_items > wg_max) {
    if (t.prefill_kv_tile > 1 && prefill_local_bytes(config, t) > local_max &&
        t.prefill_kv_tile >= t.prefill_rows) {
      t.prefill_kv_tile = largest_divisor_at_most(c.block_size, t.prefill_kv_tile - 1);
    } else if (t.prefill_rows > 1) {
      t.prefill_rows = std::max(1, t.prefill_rows / 2);
    } else if (t.prefill_kv_tile > 1) {
      t.prefill_kv_tile = largest_divisor_at_most(c.block_size, t.prefill_kv_tile - 1);
    } else if (t.prefill_row_items > 1) {
      t.prefill_row_items = largest_divisor_at_most(c.head_dim, t.prefill_row_items - 1);
    } else {
      break;
    }
  }
  while ((decode_local_bytes(config, t) > local_max || uint64_t(t.decode_items) > wg_max) &&
         t.decode_tile > 1) {
    t.decode_tile = std::max(1, t.decode_tile / 2);
    if (!t.decode_rows) t.decode_items = t.decode_tile;
  }
  while (uint64_t(t.reduce_items) > wg_max && t.reduce_items > 1)
    t.reduce_items = std::max(1, t.reduce_items / 2);
}

}  // namespace

AttentionTuning default_attention_tuning(const Device& device, const AttentionConfig& c) {
  AttentionTuning t;
  const bool cpu = device.info().type == DeviceType::kCpu;
  if (cpu) {
    // PoCL runs a work-group on one core: one item per query row / per decode chunk streams rows
    // contiguously; tiles sized for L1.
    t.prefill_rows = 16;
    t.prefill_row_items = 1;
    t.prefill_kv_tile = largest_divisor_at_most(c.pool.block_size, 32);
    t.decode_rows = true;
    t.decode_items = 1;
    t.decode_tile = 64;
    t.reduce_items = 1;
  } else {
    // Prefill: 32-key tiles (two 16-token blocks) halve the barriers and block-table reads per
    // key of 16-key tiles.
    t.prefill_rows = 16;
    t.prefill_row_items = c.pool.head_dim % 8 == 0 ? 8 : 4;
    t.prefill_kv_tile = c.pool.block_size < 32 && 32 % c.pool.block_size == 0
                            ? 32
                            : largest_divisor_at_most(c.pool.block_size, 32);
    // Decode: variant 1 with the centroid table in local memory, 256-item work-groups, 8 per
    // compute unit. On the H200 it took f16 decode attention to 0.73-0.91x and turbo3 to
    // 0.20-0.55x of variant 0 with 128 items and 4 per compute unit (bench/KV_FORMATS.md). (Its
    // TurboQuant matrix rows once missed a 10 s case timeout there: NVIDIA's compiler takes
    // 5-6.5 s to build a TurboQuant attention program, 2 s an f16 one.)
    t.decode_items = 256;
    t.decode_tile = 256;
    t.decode_variant = 1;
    t.decode_lut = true;
    t.decode_groups_per_cu = 8;
    t.reduce_items = c.pool.head_dim >= 64 ? 64 : 32;
  }
  fit_to_device(device, c, t);
  return t;
}

AttentionOp::AttentionOp(const Device& device, const AttentionConfig& config,
                         std::optional<AttentionTuning> tuning)
    : device_(&device),
      config_(config),
      tuning_(tuning ? *tuning : default_attention_tuning(device, config)) {
  const auto& c = config_.pool;
  const int32_t n_head = config_.n_head;
  const auto& t = tuning_;
  auto unsupported = [&](const std::string& why) {
    throw AttentionUnsupported("attention on " + device.info().label() + ": " + why);
  };
  if (n_head < 1 || c.n_head_kv < 1 || n_head % c.n_head_kv != 0)
    unsupported("n_head " + std::to_string(n_head) + " must be a positive multiple of n_head_kv " +
                std::to_string(c.n_head_kv));
  if (c.head_dim < 4 || c.head_dim % 4 != 0)
    unsupported("head_dim " + std::to_string(c.head_dim) + " must be a positive multiple of 4");
  if (c.block_size < 1) unsupported("block_size " + std::to_string(c.block_size) + " must be >= 1");
  if (config_.window < 0)
    unsupported("window " + std::to_string(config_.window) + " must be >= 0 (0: no window)");
  uint64_t row_bytes[2] = {0, 0};  // K, V
  for (int part = 0; part < 2; ++part) {
    const kv::KvFormat f = part == 0 ? config_.k_row_format() : config_.v_row_format();
    if (const std::string why = kv::kv_format_problem(f, uint32_t(c.head_dim)); !why.empty())
      unsupported(std::string(part == 0 ? "K: " : "V: ") + why);
    if (const std::string why = kv::kv_format_value_problem(f); part == 1 && !why.empty())
      unsupported("V: " + why);
    row_bytes[part] = kv::kv_bytes_per_token_head(f, uint32_t(c.head_dim));
    if (row_bytes[part] > UINT32_MAX)
      unsupported("a KV row of " + std::to_string(row_bytes[part]) + " bytes");
  }
  if (t.prefill_rows < 1 || t.prefill_row_items < 1 || c.head_dim % t.prefill_row_items != 0 ||
      t.prefill_kv_tile < 1 ||
      (c.block_size % t.prefill_kv_tile != 0 && t.prefill_kv_tile % c.block_size != 0) ||
      t.decode_items < 1 || t.decode_tile < 1 || t.reduce_items < 1 || t.decode_variant < 0 ||
      t.decode_variant > 1 || t.decode_groups_per_cu < 1 || t.decode_groups_per_cu > 64)
    unsupported(
        "tuning does not fit the shape (row items must divide head_dim, the KV tile divide "
        "block_size or be a multiple of it; "
        "decode variant 0 or 1; 1-64 decode groups per compute unit)");
  const uint64_t wg_max = device.info().max_group_items();
  if (uint64_t(t.prefill_rows) * t.prefill_row_items > wg_max ||
      uint64_t(t.decode_items) > wg_max || uint64_t(t.reduce_items) > wg_max)
    unsupported("work-group size over the device's " + std::to_string(wg_max));
  if (!t.decode_rows &&
      (t.decode_tile != t.decode_items || (t.decode_items & (t.decode_items - 1)) != 0))
    unsupported("the work-group decode kernel needs decode_tile == decode_items, a power of two");
  const uint64_t prefill_local = prefill_local_bytes(config_, t),
                 decode_local = decode_local_bytes(config_, t);
  const uint64_t local_max = device.info().local_mem_bytes;
  if (prefill_local > local_max || decode_local > local_max)
    unsupported("needs " + std::to_string(std::max(prefill_local, decode_local)) +
                " bytes of local memory, the device has " + std::to_string(local_max));
  scale_ = config_.scale != 0.0f ? config_.scale : 1.0f / std::sqrt(float(c.head_dim));

  options_ =
      "-DHEAD_DIM=" + std::to_string(c.head_dim) + " -DBLOCK_SIZE=" + std::to_string(c.block_size) +
      " -DN_HEAD=" + std::to_string(n_head) + " -DN_HEAD_KV=" + std::to_string(c.n_head_kv) +
      " -DK_FORMAT=" + std::string(kv::kv_format_traits(config_.k_row_format()).kernel_macro) +
      " -DV_FORMAT=" + std::string(kv::kv_format_traits(config_.v_row_format()).kernel_macro) +
      " -DK_ROW_BYTES=" + std::to_string(row_bytes[0]) +
      " -DV_ROW_BYTES=" + std::to_string(row_bytes[1]) +
      " -DPF_BQ=" + std::to_string(t.prefill_rows) +
      " -DPF_TPR=" + std::to_string(t.prefill_row_items) +
      " -DPF_KT=" + std::to_string(t.prefill_kv_tile) +
      " -DDEC_LWS=" + std::to_string(t.decode_items) +
      " -DDEC_TILE=" + std::to_string(t.decode_tile) +
      " -DRED_LWS=" + std::to_string(t.reduce_items) +
      " -DDEC_VARIANT=" + std::to_string(t.decode_variant) +
      // TurboQuant centroids by table: lane-wise reads of the codebook vector in the codec (CPUs),
      // a local-memory copy in the work-group decode kernel (variant 1; any device).
      " -DKV_TURBO_LUT=" +
      std::to_string(t.decode_lut && device.info().type == DeviceType::kCpu ? 1 : 0) +
      " -DDEC_LUT_LOCAL=" + std::to_string(t.decode_lut ? 1 : 0) +
      " -DDEC_FINISH=" + std::to_string(t.decode_finish ? 1 : 0) +
      // sqrt(head_dim) as the reference's float (prod keys' residual), exactly (hex).
      " -DKV_TURBO_SQRT_D=" + hex_float(reference::turbo::sqrt_dim(uint32_t(c.head_dim)));
  if (kv::kv_format_traits(config_.k_row_format()).turbo_prod) {
    // The cache's QJL matrix: the reference's floats, so stores and scores agree with it.
    const std::span<const float> s = reference::turbo::cache_qjl_matrix(uint32_t(c.head_dim));
    qjl_ = device.alloc(s.size_bytes(), CL_MEM_READ_ONLY);
    device.write(qjl_.get(), 0, s.data(), s.size_bytes());
  }
  write_ = device.kernel("attention", "kv_write", options_);
  finish_ = device.kernel("attention", "qkv_finish", options_);
  finish_rows_ = device.kernel("attention", "qkv_finish_rows", options_);
  prefill_ = device.kernel("attention", "attention_prefill", options_);
  decode_ = device.kernel("attention", "attention_decode_partial", options_);
  decode_rows_ = device.kernel("attention", "attention_decode_rows", options_);
  decode_shared_ = device.kernel("attention", "attention_decode_shared", options_);
  reduce_ = device.kernel("attention", "attention_decode_reduce", options_);
  if (t.fused_reduce) {
    const std::vector<int32_t> zeros(size_t(kFusedReduceTokens) * size_t(c.n_head_kv), 0);
    counters_ = device.alloc(zeros.size() * sizeof(int32_t));
    device.write(counters_.get(), 0, zeros.data(), zeros.size() * sizeof(int32_t));
  }
}

void AttentionOp::write_kv(const kv::KvBatchView& b, const kv::KvLayerView& layer, cl_mem k_new,
                           uint32_t k_offset, cl_mem v_new, uint32_t v_offset, int32_t first_token,
                           int32_t n_tokens, const Events& ev) {
  check_range(b, first_token, n_tokens, "write_kv");
  if (n_tokens == 0) return;
  const Device& d = *device_;
  set_args(d, write_.get(), k_new, k_offset, v_new, v_offset, b.meta, cl_uint(b.token_slot_offset),
           cl_uint(first_token), layer.k, layer.v, qjl_or(layer.k));
  const size_t per_row = d.info().type == DeviceType::kCpu ? 1 : size_t(config_.pool.head_dim / 4);
  launch(d, write_.get(), {per_row, size_t(config_.pool.n_head_kv), size_t(n_tokens)},
         {per_row, 1, 1}, ev);
}

void AttentionOp::qkv_finish(const kv::KvBatchView& b, const kv::KvLayerView& layer,
                             const QkvSource& src, cl_mem q_norm, cl_mem k_norm, float eps,
                             const QkvRope& rope, cl_mem q_out, uint32_t q_out_offset,
                             int32_t first_token, int32_t n_tokens, const Events& ev) {
  check_range(b, first_token, n_tokens, "qkv_finish");
  const auto& c = config_;
  check_finish(src, q_norm, k_norm, rope, n_tokens, "qkv_finish");
  if (n_tokens == 0) return;
  const Device& d = *device_;
  const cl_uint use_norm = q_norm ? 1 : 0;
  const cl_mem qn = q_norm ? q_norm : src.buf, kn = k_norm ? k_norm : src.buf;
  // CPUs: one item per token (RoPE angles once per token); GPUs: a work group per head.
  const bool rows = tuning_.decode_rows;
  const cl_mem ff = rope.freq_factors ? rope.freq_factors : src.buf;
  if (rows) {
    cl_kernel k = finish_rows_.get();
    set_args(d, k, src.buf, cl_uint(src.offset), cl_uint(src.token_stride), cl_uint(src.k_col),
             cl_uint(src.v_col), qn, kn, use_norm, eps, cl_uint(rope.n_rot),
             inv_freq_table(rope.n_rot, rope.freq_base, src.buf), rope.freq_scale, ff,
             cl_uint(rope.freq_factors ? 1 : 0), cl_uint(rope.neox ? 1 : 0),
             rope_yarn_arg(rope.yarn), b.meta, cl_uint(b.token_pos_offset),
             cl_uint(b.token_slot_offset), cl_uint(first_token), q_out, cl_uint(q_out_offset),
             layer.k, layer.v, qjl_or(layer.k));
    launch(d, k, {size_t(n_tokens), 1, 1}, {1, 1, 1}, ev);
    return;
  }
  cl_kernel k = finish_.get();
  set_args(d, k, src.buf, cl_uint(src.offset), cl_uint(src.token_stride), cl_uint(src.k_col),
           cl_uint(src.v_col), qn, kn, use_norm, eps, cl_uint(rope.n_rot), rope.freq_base,
           rope.freq_scale, ff, cl_uint(rope.freq_factors ? 1 : 0), cl_uint(rope.neox ? 1 : 0),
           rope_yarn_arg(rope.yarn), b.meta, cl_uint(b.token_pos_offset),
           cl_uint(b.token_slot_offset), cl_uint(first_token), q_out, cl_uint(q_out_offset),
           layer.k, layer.v, qjl_or(layer.k));
  const size_t lws = d.info().type == DeviceType::kCpu ? 1 : 32;  // QF_LWS in attention.cl
  const size_t heads = size_t(c.n_head + 2 * c.pool.n_head_kv);
  const size_t global[3] = {heads * lws, size_t(n_tokens), 1};
  const size_t local[3] = {lws, 1, 1};
  launch(d, k, global, local, ev);
}

void AttentionOp::check_finish(const QkvSource& src, cl_mem q_norm, cl_mem k_norm,
                               const QkvRope& rope, int32_t n_tokens, const char* what) const {
  const auto& c = config_;
  const std::string op = std::string("attention ") + what + ": ";
  const uint32_t q_dim = uint32_t(c.n_head * c.pool.head_dim),
                 kv_dim = uint32_t(c.pool.n_head_kv * c.pool.head_dim);
  // n_rot 0: no position encoding (the kernels rotate no pair).
  if (rope.n_rot % 2 != 0 || rope.n_rot > uint32_t(c.pool.head_dim))
    throw AttentionError(op + "n_rot " + std::to_string(rope.n_rot) +
                         " must be even and <= head_dim " + std::to_string(c.pool.head_dim) +
                         " (0: no RoPE)");
  if (const std::string why =
          rope_frequency_problem(rope.n_rot, rope.freq_scale, rope.freq_factors, rope.yarn);
      !why.empty())
    throw AttentionError(op + why);
  if ((q_norm == nullptr) != (k_norm == nullptr))
    throw AttentionError(op + "q_norm and k_norm must be given together");
  const uint32_t row_end = std::max({q_dim, src.k_col + kv_dim, src.v_col + kv_dim});
  if (src.token_stride < row_end && n_tokens > 1)
    throw AttentionError(op + "token stride " + std::to_string(src.token_stride) +
                         " shorter than the q/k/v columns (" + std::to_string(row_end) + ")");
}

cl_mem AttentionOp::inv_freq_table(uint32_t n_rot, float freq_base, cl_mem none) {
  if (n_rot == 0) return none;  // no pair is rotated: the kernel reads no entry
  for (const auto& t : inv_freq_)
    if (t.n_rot == n_rot && t.freq_base == freq_base) return t.buf.get();
  // In double, then rounded: reference::rope's value of freq_base^(-2i/n_rot).
  std::vector<float> inv(n_rot / 2);
  for (uint32_t i = 0; i < n_rot / 2; ++i)
    inv[i] = float(std::pow(double(freq_base), -2.0 * i / double(n_rot)));
  InvFreqTable t{n_rot, freq_base, device_->alloc(inv.size() * sizeof(float), CL_MEM_READ_ONLY)};
  device_->write(t.buf.get(), 0, inv.data(), inv.size() * sizeof(float));
  inv_freq_.push_back(std::move(t));
  return inv_freq_.back().buf.get();
}

void AttentionOp::prefill(const kv::KvBatchView& b, const kv::KvLayerView& layer, cl_mem q,
                          uint32_t q_offset, cl_mem out, uint32_t out_offset, int32_t first_token,
                          int32_t n_tokens, const Events& ev, cl_mem sinks) {
  check_range(b, first_token, n_tokens, "prefill");
  check_sinks(sinks, config_.n_head, "prefill");
  if (n_tokens == 0) return;
  const Device& d = *device_;
  // Without sinks the kernel never reads them: any valid buffer fills the argument.
  set_args(d, prefill_.get(), q, q_offset, out, out_offset, b.meta, cl_uint(b.block_tables_offset),
           cl_uint(b.block_table_stride), cl_uint(b.token_seq_offset), cl_uint(b.token_pos_offset),
           cl_uint(first_token), cl_uint(n_tokens), scale_, cl_uint(config_.window), layer.k,
           layer.v, sinks ? sinks : q, cl_uint(sinks ? 1 : 0), qjl_or(layer.k));
  const size_t wg = size_t(tuning_.prefill_rows) * tuning_.prefill_row_items;
  const size_t tiles = (size_t(n_tokens) + tuning_.prefill_rows - 1) / tuning_.prefill_rows;
  launch(d, prefill_.get(), {tiles * wg, size_t(config_.n_head), 1}, {wg, 1, 1}, ev);
}

DecodeSplit AttentionOp::decode_split(int32_t n_tokens, int32_t max_context) const {
  const int64_t tiles =
      std::max<int64_t>(1, (int64_t(max_context) + tuning_.decode_tile - 1) / tuning_.decode_tile);
  // Enough work-groups to fill the device a few times over; no more chunks than tiles.
  const int64_t per_cu = tuning_.decode_groups_per_cu;
  const int64_t target = per_cu * int64_t(std::max<uint32_t>(1, device_->info().compute_units));
  const int64_t per_chunk = std::max<int64_t>(1, int64_t(n_tokens) * config_.pool.n_head_kv);
  int64_t chunks =
      std::clamp<int64_t>((target + per_chunk - 1) / per_chunk, 1,
                          std::min<int64_t>(kMaxDecodeChunksPerGroupPerCu * per_cu, tiles));
  DecodeSplit s;
  s.chunk_tokens = int32_t((tiles + chunks - 1) / chunks * tuning_.decode_tile);
  s.n_chunks =
      int32_t(std::max<int64_t>(1, (int64_t(max_context) + s.chunk_tokens - 1) / s.chunk_tokens));
  return s;
}

size_t AttentionOp::decode_workspace_bytes(int32_t max_tokens, int32_t max_context) const {
  // Token count times chunks is not monotonic in the token count (fewer tokens, more chunks):
  // take the largest over every count up to max_tokens.
  size_t most = 0;
  for (int32_t n = 1; n <= max_tokens; ++n) {
    const DecodeSplit s = decode_split(n, max_context);
    most = std::max(most, size_t(n) * size_t(s.n_chunks));
  }
  return most * size_t(config_.n_head) * size_t(config_.pool.head_dim + 2) * sizeof(float);
}

void AttentionOp::decode(const kv::KvBatchView& b, const kv::KvLayerView& layer, cl_mem q,
                         uint32_t q_offset, cl_mem out, uint32_t out_offset, int32_t first_token,
                         int32_t n_tokens, cl_mem workspace, size_t workspace_bytes,
                         const Events& ev, cl_mem sinks, const DecodeFinish* finish) {
  check_range(b, first_token, n_tokens, "decode");
  if (n_tokens == 0) {
    check_decode(sinks, finish, n_tokens);
    return;
  }
  const Device& d = *device_;
  cl_kernel k = tuning_.decode_rows           ? decode_rows_.get()
                : tuning_.decode_variant == 1 ? decode_shared_.get()
                                              : decode_.get();
  // The fused combine (the last work-group of each (token, KV head) writes out): one launch.
  const bool fused = counters_ && n_tokens <= kFusedReduceTokens;
  const DecodeSplit s = decode_args(k, 0, b, layer, q, q_offset, out, out_offset, first_token,
                                    n_tokens, workspace, workspace_bytes, sinks, finish, fused);
  const size_t lws = tuning_.decode_rows ? 1 : size_t(tuning_.decode_items);
  launch(d, k, {size_t(s.n_chunks) * lws, size_t(config_.pool.n_head_kv), size_t(n_tokens)},
         {lws, 1, 1}, {ev.wait, fused ? ev.done : nullptr});
  if (fused) return;
  set_args(d, reduce_.get(), workspace, cl_uint(s.n_chunks), cl_uint(first_token), out, out_offset,
           sinks ? sinks : workspace, cl_uint(sinks ? 1 : 0));
  const size_t rl = size_t(tuning_.reduce_items);
  launch(d, reduce_.get(), {rl, size_t(config_.n_head), size_t(n_tokens)}, {rl, 1, 1},
         {{}, ev.done});
}

void AttentionOp::check_decode(cl_mem sinks, const DecodeFinish* finish, int32_t n_tokens) const {
  check_sinks(sinks, config_.n_head, "decode");
  if (finish && !tuning_.decode_finish)
    throw AttentionError(
        "attention decode (finish): this op was built without the finish "
        "(AttentionTuning::decode_finish)");
  if (finish)
    check_finish(finish->src, finish->q_norm, finish->k_norm, finish->rope, n_tokens,
                 "decode (finish)");
}

bool AttentionOp::can_decode_phase() const {
  return tuning_.decode_rows && tuning_.decode_finish && counters_;
}

uint32_t AttentionOp::set_decode_phase_args(cl_kernel k, uint32_t first,
                                            const kv::KvBatchView& b, const kv::KvLayerView& layer,
                                            cl_mem out, uint32_t out_offset, cl_mem workspace,
                                            size_t workspace_bytes, cl_mem sinks,
                                            const DecodeFinish& finish) {
  if (!can_decode_phase())
    throw AttentionError(
        "attention decode (as a launch's phase): this op was built without the row decode, its "
        "finish or the fused combine");
  check_range(b, 0, 1, "decode (as a launch's phase)");
  const DecodeSplit s = decode_args(k, first, b, layer, workspace, 0, out, out_offset, 0, 1,
                                    workspace, workspace_bytes, sinks, &finish, true);
  return uint32_t(s.n_chunks) * uint32_t(config_.pool.n_head_kv);
}

DecodeSplit AttentionOp::decode_args(cl_kernel k, uint32_t first, const kv::KvBatchView& b,
                                     const kv::KvLayerView& layer, cl_mem q, uint32_t q_offset,
                                     cl_mem out, uint32_t out_offset, int32_t first_token,
                                     int32_t n_tokens, cl_mem workspace, size_t workspace_bytes,
                                     cl_mem sinks, const DecodeFinish* finish, bool fused) {
  check_decode(sinks, finish, n_tokens);
  const Device& d = *device_;
  // The split (chunk count, so the launch's size and the workspace layout) follows the layout's
  // capacity, which stays the same from step to step; the kernels size the chunks from the
  // step's longest context in meta, so a recorded launch stays right as sequences grow.
  // A window layer's tokens see at most `window` positions: its chunks cover that much.
  int32_t span = b.context_capacity > 0 ? b.context_capacity : b.max_context;
  if (config_.window > 0) span = std::min(span, config_.window);
  const DecodeSplit s = decode_split(n_tokens, span);
  const size_t need = size_t(n_tokens) * size_t(s.n_chunks) * size_t(config_.n_head) *
                      size_t(config_.pool.head_dim + 2) * sizeof(float);
  if (workspace_bytes < need)
    throw AttentionError("attention decode: workspace of " + std::to_string(workspace_bytes) +
                         " bytes, needs " + std::to_string(need) + " (decode_workspace_bytes)");
  // Without `finish` its arguments are unread: any valid buffer fills them.
  const DecodeFinish none{{workspace, 0, 0, 0, 0}, nullptr, nullptr, 0.0f, {}};
  const DecodeFinish& f = finish ? *finish : none;
  const cl_mem qn = f.q_norm ? f.q_norm : workspace, kn = f.k_norm ? f.k_norm : workspace;
  set_args_from(d, k, first, finish ? f.src.buf : q, q_offset, b.meta, cl_uint(b.block_tables_offset),
           cl_uint(b.block_table_stride), cl_uint(b.token_seq_offset), cl_uint(b.token_pos_offset),
           cl_uint(first_token), cl_uint(b.max_context_offset), cl_uint(s.n_chunks), scale_,
           cl_uint(config_.window), layer.k, layer.v, workspace, cl_uint(fused ? 1 : 0),
           fused ? counters_.get() : workspace, out, out_offset, sinks ? sinks : workspace,
           cl_uint(sinks ? 1 : 0), cl_uint(finish ? 1 : 0), f.src.buf, cl_uint(f.src.offset),
           cl_uint(f.src.token_stride), cl_uint(f.src.k_col), cl_uint(f.src.v_col), qn, kn,
           cl_uint(f.q_norm ? 1 : 0), f.eps, cl_uint(f.rope.n_rot),
           inv_freq_table(f.rope.n_rot, f.rope.freq_base, workspace), f.rope.freq_scale,
           f.rope.freq_factors ? f.rope.freq_factors : workspace,
           cl_uint(f.rope.freq_factors ? 1 : 0), cl_uint(f.rope.neox ? 1 : 0),
           rope_yarn_arg(f.rope.yarn), cl_uint(b.token_slot_offset), qjl_or(layer.k));
  return s;
}

}  // namespace tessera::ops
