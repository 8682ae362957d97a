// Portability-matrix cases of the attention kernels: a paged KV layout built by hand (shuffled
// block ids, contexts not multiples of the block size, several sequences), K/V stored through
// kv_write, prefill or decode attention against reference::causal_attention over K/V as the pools'
// formats store them (reference::kv_round_trip: f16 rounding, q8_0 / q4_0 blocks; K and V formats
// chosen separately);
// with a sliding window, the step's block tables point the blocks before each sequence's window at
// a block nothing wrote (NaN), as a window layer's cache releases them: a kernel reading there
// fails the case.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "host/common/half.h"
#include "host/ops/device/attention.h"
#include "host/ops/device/matrix.h"
#include "host/ops/reference/attention.h"
#include "host/ops/reference/kv_codec.h"
#include "host/ops/reference/norm.h"
#include "host/ops/reference/rope.h"

namespace tessera::ops {

namespace {

// Pools start as f16 NaN (bytes 00 7E repeated): every format's rows start at an even byte and
// begin with an f16 (the element or a block scale), so a read of a slot no token wrote poisons the
// output.
std::vector<uint8_t> nan_pool(const kv::KvPoolLayout& layout) {
  std::vector<uint8_t> pool(layout.pool_bytes());
  for (size_t i = 1; i < pool.size(); i += 2) pool[i] = 0x7E;
  return pool;
}

kv::KvPoolLayout with_format(kv::KvPoolLayout layout, kv::KvFormat format) {
  layout.format = format;
  return layout;
}

// The codec's error bound for one stored value of a row: f16 rounding is compared directly; a
// q8_0 value is within d/2 of its input plus the scale's f16 rounding over 127 codes (< 0.6 d), a
// q4_0 value within d (the clamp of the top code) plus that rounding over 8 codes.
double codec_slack(kv::KvFormat f) {
  return f == kv::KvFormat::kQ8_0 ? 0.6 : f == kv::KvFormat::kQ4_0 ? 1.02 : 0.0;
}

// A TurboQuant row the device stored for `x` against the host's encoding of x, in the rotated
// domain (norm, then each channel's value): where the device's RoPE differs from the host's in the
// last bits, a coordinate next to a cell boundary may take the neighbouring centroid, which is
// accepted when x's rotated coordinate lies within 1e-3 of the two centroids' midpoint.
void turbo_row_check(kv::KvFormat f, std::span<const uint8_t> row, std::span<const float> x,
                     std::vector<float>& got, std::vector<float>& ref) {
  const reference::turbo::RowShape shape = reference::kv_turbo_shape(f, x.size());
  std::vector<uint8_t> host(row.size());
  reference::kv_encode_row(f, x, host);
  const size_t d = x.size();
  std::vector<float> g(d), h(d), y(x.begin(), x.end());
  reference::turbo::decode_row_rotated(shape, row, g);
  reference::turbo::decode_row_rotated(shape, host, h);
  reference::turbo::rotate(y, reference::turbo::default_seed());
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double norm_g = fp16_to_fp32(uint16_t(row[0] | (row[1] << 8))),
               norm_h = fp16_to_fp32(uint16_t(host[0] | (host[1] << 8)));
  got.push_back(float(norm_g));
  ref.push_back(float(norm_h));
  const double sd = std::sqrt(double(d));
  for (size_t i = 0; i < d; ++i) {
    const double cg = norm_g > 0 ? g[i] * sd / norm_g : 0, ch = norm_h > 0 ? h[i] * sd / norm_h : 0;
    const double t = ss > 0 ? y[i] * sd / std::sqrt(ss) : 0;
    const bool same = std::fabs(cg - ch) < 1e-4, tie = std::fabs(t - 0.5 * (cg + ch)) < 1e-3;
    got.push_back(g[i]);
    ref.push_back(same || tie ? g[i] : h[i]);
  }
}

// A prod row (TurboQuant keys with a QJL sketch) the device stored for x: its norm and codes as
// turbo_row_check's (ties accepted), then its sketch against the signs of S r for the residual r
// the host computes from the device's own codes and norm (a sign whose product lies within 1e-4
// of zero, relative to |S| |r|, may go either way) and its residual norm against that r's.
void turbo_prod_row_check(kv::KvFormat f, std::span<const uint8_t> row, std::span<const float> x,
                          std::vector<float>& got, std::vector<float>& ref) {
  const reference::turbo::RowShape shape = reference::kv_turbo_shape(f, x.size());
  const uint32_t d = uint32_t(x.size()), bits = shape.lo_bits;
  std::vector<uint8_t> host(row.size());
  reference::kv_encode_row(f, x, host);
  const auto cb = reference::turbo::codebook(bits);
  auto code = [&](std::span<const uint8_t> r, uint32_t i) {
    uint32_t word = 0;
    for (uint32_t b = 0; b < bits; ++b) word |= uint32_t(r[2 + (i / 8) * bits + b]) << (8 * b);
    return (word >> ((i % 8) * bits)) & ((1u << bits) - 1);
  };
  auto f16 = [](std::span<const uint8_t> r, size_t at) {
    return fp16_to_fp32(uint16_t(r[at] | (r[at + 1] << 8)));
  };
  const double norm_g = f16(row, 0);
  got.push_back(float(norm_g));
  ref.push_back(f16(host, 0));
  std::vector<float> y(x.begin(), x.end());
  reference::turbo::rotate(y, reference::turbo::default_seed());
  double ss = 0;
  for (float v : x) ss += double(v) * v;
  const double sd = std::sqrt(double(d));
  std::vector<double> r(d);
  double rr = 0;
  for (uint32_t i = 0; i < d; ++i) {
    const double cg = cb[code(row, i)], ch = cb[code(host, i)];
    const double t = ss > 0 ? y[i] * sd / std::sqrt(ss) : 0;
    const bool tie = std::fabs(t - 0.5 * (cg + ch)) < 1e-3;
    got.push_back(float(cg));
    ref.push_back(float(cg == ch || tie ? cg : ch));
    r[i] = double(y[i]) * sd - norm_g * cg;
    rr += r[i] * r[i];
  }
  const std::span<const float> qjl = reference::turbo::cache_qjl_matrix(d);
  const size_t signs_at = 2 + size_t(d) * bits / 8, gamma_at = signs_at + d / 8;
  for (uint32_t j = 0; j < d; ++j) {
    double z = 0, zz = 0;
    for (uint32_t i = 0; i < d; ++i) {
      z += double(qjl[size_t(j) * d + i]) * r[i];
      zz += double(qjl[size_t(j) * d + i]) * qjl[size_t(j) * d + i];
    }
    const float sg = (row[signs_at + j / 8] >> (j % 8)) & 1u ? -1.0f : 1.0f;
    got.push_back(sg);
    ref.push_back(std::fabs(z) < 1e-4 * std::sqrt(zz * rr) ? sg : (z < 0 ? -1.0f : 1.0f));
  }
  // The residual norm is an f16: within half its unit in the last place of the exact value.
  const double gamma = f16(row, gamma_at), exact = std::sqrt(rr / d);
  got.push_back(float(gamma));
  ref.push_back(float(std::fabs(gamma - exact) <= exact * 0x1.02p-11 + 1e-7 ? gamma : exact));
}

struct SeqSpec {
  int32_t past;   // tokens already in the cache
  int32_t fresh;  // tokens of this step (queries), at positions past .. past + fresh - 1
};

// with_sinks: a learned sink logit per query head (gpt-oss), in [-1, 3) so it takes a visible
// share.
// A decode kernel other than the device's default (AttentionTuning): `other_kernel` swaps the
// row-streaming and the work-group kernel (64 items), `variant` / `lut` as decode_variant /
// decode_lut (variant -1: the device's own), `reduce_launch` combines the chunks by the reduce
// launch instead of the decode launch's last work-group (fused_reduce off); prefill_row_items /
// prefill_kv_tile (> 0) set the prefill kernel's shape: items per query row (1: the CPUs' form,
// more: the GPUs' register-blocked form) and keys per tile (a divisor or a multiple of the block).
// finish (decode; AttentionOp::DecodeFinish): the step tokens' q, k and v come unfinished in q|k|v
// rows and the decode launch finishes them and stores k and v (over what kv_write stored at those
// slots before): 1, Qwen3's q/k norms and NeoX RoPE; 2, no norms, llama's RoPE over half the head;
// 3, norms and no RoPE.
struct DecodeTweak {
  const char* name = "";
  bool other_kernel = false;
  int32_t variant = 0;
  bool lut = false;
  bool reduce_launch = false;
  int32_t prefill_row_items = 0;
  int32_t prefill_kv_tile = 0;
  int32_t finish = 0;
};

MatrixCaseResult run_attention_case(const Device& device, bool timing, bool decode,
                                    const AttentionConfig& cfg, const std::vector<SeqSpec>& seqs,
                                    bool with_sinks = false,
                                    std::optional<DecodeTweak> tweak = std::nullopt) {
  const int32_t H = cfg.n_head, HK = cfg.pool.n_head_kv, D = cfg.pool.head_dim,
                bs = cfg.pool.block_size;
  std::optional<AttentionTuning> tuning;
  if (tweak) {
    tuning = default_attention_tuning(device, cfg);
    if (tweak->other_kernel) {
      tuning->decode_rows = !tuning->decode_rows;
      tuning->decode_items = tuning->decode_rows ? 1 : 64;
      tuning->decode_tile = 64;
    }
    if (tweak->variant >= 0) {
      tuning->decode_variant = tweak->variant;
      tuning->decode_lut = tweak->lut;
    }
    tuning->fused_reduce = !tweak->reduce_launch;
    if (tweak->prefill_row_items > 0) tuning->prefill_row_items = tweak->prefill_row_items;
    if (tweak->prefill_kv_tile > 0) tuning->prefill_kv_tile = tweak->prefill_kv_tile;
    tuning->decode_finish = tweak->finish != 0;
  }
  // A shape the device's limits cannot fit even with tiles shrunk to them is unsupported there.
  std::optional<AttentionOp> op_storage;
  try {
    op_storage.emplace(device, cfg, tuning);
  } catch (const AttentionUnsupported& e) {
    throw MatrixUnsupported(e.what());
  }
  AttentionOp& op = *op_storage;

  // Block tables: every sequence's blocks taken from a shuffled pool, so tables are not ranges.
  int32_t n_blocks = 0;
  for (const auto& s : seqs) n_blocks += (s.past + s.fresh + bs - 1) / bs;
  const int32_t released_block = n_blocks++;  // never written: NaN, stands for released blocks
  std::vector<int32_t> ids(static_cast<size_t>(n_blocks - 1));
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(uint32_t(H * 131 + D * 7 + bs + seqs.size()));
  std::shuffle(ids.begin(), ids.end(), rng);
  int32_t stride = 1;
  for (const auto& s : seqs) stride = std::max(stride, (s.past + s.fresh + bs - 1) / bs);
  const int32_t n_seqs = int32_t(seqs.size());
  std::vector<int32_t> tables(size_t(n_seqs) * stride, -1);
  for (int32_t i = 0, next = 0; i < n_seqs; ++i)
    for (int32_t b = 0; b < (seqs[size_t(i)].past + seqs[size_t(i)].fresh + bs - 1) / bs; ++b)
      tables[size_t(i) * stride + b] = ids[size_t(next++)];

  // Two batches over the same tables: every token of every sequence (for kv_write), and the step's
  // query tokens. Meta layout as KvBatchView: tables, token_seq, token_pos, token_slot,
  // max_context.
  auto make_meta = [&](bool all_tokens, kv::KvBatchView& v, std::vector<int32_t>& meta) {
    std::vector<int32_t> tseq, tpos, tslot;
    int32_t max_ctx = 0;
    for (int32_t i = 0; i < n_seqs; ++i) {
      const auto& s = seqs[size_t(i)];
      for (int32_t p = all_tokens ? 0 : s.past; p < s.past + s.fresh; ++p) {
        tseq.push_back(i);
        tpos.push_back(p);
        tslot.push_back(tables[size_t(i) * stride + p / bs] * bs + p % bs);
        max_ctx = std::max(max_ctx, p + 1);
      }
    }
    meta = tables;
    if (!all_tokens && cfg.window > 0) {
      // Blocks wholly before the window of a sequence's first query token are released.
      for (int32_t i = 0; i < n_seqs; ++i) {
        const int32_t keep_from = seqs[size_t(i)].past - cfg.window + 1;
        for (int32_t b = 0; (b + 1) * bs <= keep_from; ++b)
          meta[size_t(i) * stride + b] = released_block;
      }
    }
    v.block_tables_offset = 0;
    v.block_table_stride = uint32_t(stride);
    v.token_seq_offset = uint32_t(meta.size());
    meta.insert(meta.end(), tseq.begin(), tseq.end());
    v.token_pos_offset = uint32_t(meta.size());
    meta.insert(meta.end(), tpos.begin(), tpos.end());
    v.token_slot_offset = uint32_t(meta.size());
    meta.insert(meta.end(), tslot.begin(), tslot.end());
    v.max_context_offset = uint32_t(meta.size());
    meta.push_back(max_ctx);
    v.n_seqs = n_seqs;
    v.n_tokens = int32_t(tseq.size());
    v.max_context = max_ctx;
  };
  kv::KvBatchView all_view, step_view;
  std::vector<int32_t> all_meta, step_meta;
  make_meta(true, all_view, all_meta);
  make_meta(false, step_view, step_meta);

  const int32_t n_all = all_view.n_tokens, n_step = step_view.n_tokens;
  const std::vector<float> k = random_floats(size_t(n_all) * HK * D, 101 + D);
  const std::vector<float> v = random_floats(size_t(n_all) * HK * D, 102 + D);
  std::vector<float> q = random_floats(size_t(n_step) * H * D, 103 + D);
  for (float& x : q) x *= 2.0f;  // a peakier softmax makes masking mistakes visible

  kv::KvPoolLayout layout = cfg.pool;
  layout.n_blocks = n_blocks;
  const kv::KvFormat kf = cfg.k_row_format(), vf = cfg.v_row_format();
  GuardedBuffer kpool(device, nan_pool(with_format(layout, kf))),
      vpool(device, nan_pool(with_format(layout, vf)));
  GuardedBuffer all_meta_b(device, all_meta), step_meta_b(device, step_meta);
  GuardedBuffer kb(device, k), vb(device, v), qb(device, q);
  GuardedBuffer out(device, q.size() * sizeof(float));
  std::vector<float> sinks;
  if (with_sinks) sinks = random_floats(size_t(H), 104 + D, -1.0f, 3.0f);
  std::optional<GuardedBuffer> sinks_b;
  if (with_sinks) sinks_b.emplace(device, sinks);
  const cl_mem sinks_mem = sinks_b ? sinks_b->mem() : nullptr;
  all_view.meta = all_meta_b.mem();
  step_view.meta = step_meta_b.mem();
  const kv::KvLayerView layer{kpool.mem(), vpool.mem()};

  // The finish: unfinished q|k|v rows of the step's tokens (a gap after q, after v); the host
  // finishes them as reference::rms_norm + rope and the reference attends to the finished q and
  // k and the given v at the step's positions (kv_write stored the other random rows there first).
  const int32_t fin = decode && tweak ? tweak->finish : 0;
  std::vector<float> k_att = k, v_att = v;
  const uint32_t q_dim = uint32_t(H * D), kv_dim = uint32_t(HK * D), k_col = q_dim + 4,
                 v_col = k_col + kv_dim, qkv_stride = v_col + kv_dim + 3;
  const bool fin_norm = fin == 1 || fin == 3, fin_neox = fin == 1;
  const int32_t fin_rot = fin == 1 ? D : fin == 2 ? D / 2 : 0;
  const float fin_eps = 1e-6f, fin_base = 1000000.0f;
  std::vector<float> qkv_rows, qnw, knw;
  if (fin) {
    qkv_rows = random_floats(size_t(n_step) * qkv_stride, 305 + D, -2.0f, 2.0f);
    qnw = random_floats(size_t(D), 302, 0.5f, 2.0f);
    knw = random_floats(size_t(D), 303, 0.5f, 2.0f);
    const auto mode = fin_neox ? reference::RopeMode::kNeox : reference::RopeMode::kNormal;
    size_t all_row = 0, t = 0;
    for (const auto& sq : seqs) {
      for (int32_t i = 0; i < sq.fresh; ++i, ++t) {
        const float* row = qkv_rows.data() + t * qkv_stride;
        std::vector<float> qh(row, row + q_dim), kh(row + k_col, row + k_col + kv_dim);
        if (fin_norm) {
          reference::rms_norm(qh, qnw, fin_eps, qh);
          reference::rms_norm(kh, knw, fin_eps, kh);
        }
        if (fin_rot > 0) {
          reference::rope(qh, H, D, fin_rot, sq.past + i, fin_base, mode, 1.0f, {}, {});
          reference::rope(kh, HK, D, fin_rot, sq.past + i, fin_base, mode, 1.0f, {}, {});
        }
        std::copy(qh.begin(), qh.end(), q.begin() + std::ptrdiff_t(t * q_dim));
        const size_t at = (all_row + size_t(sq.past + i)) * kv_dim;
        std::copy(kh.begin(), kh.end(), k_att.begin() + std::ptrdiff_t(at));
        std::copy(row + v_col, row + v_col + kv_dim, v_att.begin() + std::ptrdiff_t(at));
      }
      all_row += size_t(sq.past + sq.fresh);
    }
  }
  std::optional<GuardedBuffer> qkv_b, qn_b, kn_b;
  std::optional<AttentionOp::DecodeFinish> finish;
  if (fin) {
    qkv_b.emplace(device, qkv_rows);
    qn_b.emplace(device, qnw);
    kn_b.emplace(device, knw);
    finish = AttentionOp::DecodeFinish{{qkv_b->mem(), 0, qkv_stride, k_col, v_col},
                                       fin_norm ? qn_b->mem() : nullptr,
                                       fin_norm ? kn_b->mem() : nullptr,
                                       fin_eps,
                                       {uint32_t(fin_rot), fin_base, fin_neox, 1.0f, nullptr, {}}};
  }

  op.write_kv(all_view, layer, kb.mem(), 0, vb.mem(), 0, 0, n_all);
  const size_t ws_bytes = op.decode_workspace_bytes(n_step, step_view.max_context);
  GuardedBuffer ws(device, ws_bytes);
  auto run = [&](const Events& ev) {
    if (decode)
      op.decode(step_view, layer, qb.mem(), 0, out.mem(), 0, 0, n_step, ws.mem(), ws_bytes, ev,
                sinks_mem, finish ? &*finish : nullptr);
    else
      op.prefill(step_view, layer, qb.mem(), 0, out.mem(), 0, 0, n_step, ev, sinks_mem);
  };
  run({});
  const std::vector<float> got = out.download<float>();

  // Reference per sequence over its history as the pools store it (all_view's token order: seq by
  // seq).
  const std::vector<float> k_stored = reference::kv_round_trip(kf, k_att, D),
                           v_stored = reference::kv_round_trip(vf, v_att, D);
  std::vector<float> ref(q.size());
  size_t all_row = 0, step_row = 0;
  double pairs = 0, kv_bytes = 0;
  for (const auto& s : seqs) {
    const int32_t ctx = s.past + s.fresh;
    std::vector<float> ks(size_t(ctx) * HK * D), vs(ks.size());
    for (size_t i = 0; i < ks.size(); ++i) {
      ks[i] = k_stored[all_row * HK * D + i];
      vs[i] = v_stored[all_row * HK * D + i];
    }
    const size_t qn = size_t(s.fresh) * H * D;
    reference::causal_attention({q.data() + step_row * H * D, qn}, ks, vs, {H, HK, D}, op.scale(),
                                {ref.data() + step_row * H * D, qn}, cfg.window, sinks);
    for (int32_t i = 0; i < s.fresh; ++i)
      pairs += cfg.window > 0 ? std::min(s.past + i + 1, cfg.window) : s.past + i + 1;
    kv_bytes += double(ctx) * HK *
                double(layout.token_head_bytes() + with_format(layout, vf).token_head_bytes());
    all_row += size_t(ctx);
    step_row += size_t(s.fresh);
  }
  // Quantized rows: the kernels quantize with the host quantizer's arithmetic, but a device's
  // float division may differ from the host's in the last bit and move a code at a rounding tie.
  const bool quantized = kf != kv::KvFormat::kF16 || vf != kv::KvFormat::kF16;
  std::vector<std::string> guards{out.check_guard(), kpool.check_guard(), vpool.check_guard(),
                                  ws.check_guard()};
  if (sinks_b) guards.push_back(sinks_b->check_guard());
  if (qkv_b) guards.push_back(qkv_b->check_guard());
  // With the finish, RoPE angles up to 700 rad in float bound the error (as the qkv_finish cases).
  MatrixCaseResult r = judge(compare(got, ref), fin ? 1e-3 : quantized ? 1e-4 : 1e-5, guards);
  r.bytes = kv_bytes + double(q.size()) * 8;
  r.flops = 4.0 * D * H * pairs;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      run({{}, ev.out()});
      return ev;
    });
  }
  return r;
}

// qkv_finish against reference rms_norm + rope per head and f16-rounded K/V rows at the tokens'
// slots (shuffled, one padding token with slot -1); the q/k/v source is one fused row per token
// with a gap, so the strides and column offsets are exercised.
// other_shape: the kernel shape the device does not use by default (per-token rows on GPUs,
// per-head work groups on CPUs), so both are checked everywhere.
// freq_scale / with_factors: RoPE frequency scaling (linear; random rope_freqs divisors in [1, 8));
// yarn: YaRN with factor 1 / freq_scale over an original context of 4096.
MatrixCaseResult run_qkv_finish_case(const Device& device, bool timing, const AttentionConfig& cfg,
                                     bool norm, bool neox, int32_t n_rot, bool other_shape,
                                     float freq_scale, bool with_factors, bool yarn) {
  const int32_t H = cfg.n_head, HK = cfg.pool.n_head_kv, D = cfg.pool.head_dim,
                bs = cfg.pool.block_size;
  const int32_t n = 7, n_blocks = 3;
  AttentionTuning tuning = default_attention_tuning(device, cfg);
  if (other_shape) {
    tuning.decode_rows = !tuning.decode_rows;
    if (!tuning.decode_rows) tuning.decode_items = tuning.decode_tile = 64;
  }
  std::optional<AttentionOp> op_storage;
  try {
    op_storage.emplace(device, cfg, tuning);
  } catch (const AttentionUnsupported& e) {
    throw MatrixUnsupported(e.what());
  }
  AttentionOp& op = *op_storage;
  const uint32_t q_dim = uint32_t(H * D), kv_dim = uint32_t(HK * D);
  const uint32_t k_col = q_dim + 4, v_col = k_col + kv_dim, stride = v_col + kv_dim + 3;
  const std::vector<float> qkv = random_floats(size_t(n) * stride, 301 + D);
  const std::vector<float> qw = random_floats(size_t(D), 302), kw = random_floats(size_t(D), 303);
  std::vector<int32_t> slots(size_t(n_blocks * bs));
  std::iota(slots.begin(), slots.end(), 0);
  std::mt19937 rng(uint32_t(304 + D));
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(size_t(n));
  slots[3] = -1;  // padding token
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (auto& p : pos) p = int32_t(rng() % 3000);
  pos[0] = 0;
  // meta: token_pos then token_slot (no block tables needed by this kernel).
  kv::KvBatchView view;
  std::vector<int32_t> meta = pos;
  view.token_pos_offset = 0;
  view.token_slot_offset = uint32_t(meta.size());
  meta.insert(meta.end(), slots.begin(), slots.end());
  view.n_tokens = n;
  view.n_seqs = 1;
  view.max_context = 3000;
  const float eps = 1e-6f, base = 1000000.0f;

  kv::KvPoolLayout layout = cfg.pool;
  layout.n_blocks = n_blocks;
  const kv::KvFormat kf = cfg.k_row_format(), vf = cfg.v_row_format();
  const kv::KvPoolLayout k_layout = with_format(layout, kf), v_layout = with_format(layout, vf);
  GuardedBuffer kpool(device, nan_pool(k_layout)), vpool(device, nan_pool(v_layout)),
      metab(device, meta);
  GuardedBuffer src(device, qkv), qwb(device, qw), kwb(device, kw);
  GuardedBuffer qout(device, size_t(n) * q_dim * sizeof(float));
  std::vector<float> factors;
  if (with_factors) factors = random_floats(size_t(n_rot / 2), 305 + uint32_t(n_rot), 1.0f, 8.0f);
  std::optional<GuardedBuffer> ffb;
  if (with_factors) ffb.emplace(device, factors);
  view.meta = metab.mem();
  const kv::KvLayerView layer{kpool.mem(), vpool.mem()};
  const AttentionOp::QkvSource source{src.mem(), 0, stride, k_col, v_col};
  const reference::RopeYarn yarn_params =
      yarn ? reference::rope_yarn_params(n_rot, 4096, base, 1.0f / freq_scale)
           : reference::RopeYarn{};
  const AttentionOp::QkvRope rope{
      uint32_t(n_rot), base, neox, freq_scale, ffb ? ffb->mem() : nullptr, yarn_params};
  auto run = [&](const Events& ev) {
    op.qkv_finish(view, layer, source, norm ? qwb.mem() : nullptr, norm ? kwb.mem() : nullptr, eps,
                  rope, qout.mem(), 0, 0, n, ev);
  };
  run({});
  const auto got_q = qout.download<float>();
  const auto kp = kpool.download<uint8_t>(), vp = vpool.download<uint8_t>();
  const size_t k_rb = k_layout.token_head_bytes(), v_rb = v_layout.token_head_bytes();

  const auto mode = neox ? reference::RopeMode::kNeox : reference::RopeMode::kNormal;
  std::vector<float> ref_q(size_t(n) * q_dim), got_kv, ref_kv;
  for (int32_t t = 0; t < n; ++t) {
    const float* row = qkv.data() + size_t(t) * stride;
    std::vector<float> q(row, row + q_dim), k(row + k_col, row + k_col + kv_dim);
    if (norm) {
      reference::rms_norm(q, qw, eps, q);
      reference::rms_norm(k, kw, eps, k);
    }
    if (n_rot > 0) {  // n_rot 0: no position encoding (Granite 4.0-H)
      reference::rope(q, H, D, n_rot, pos[size_t(t)], base, mode, freq_scale, factors, yarn_params);
      reference::rope(k, HK, D, n_rot, pos[size_t(t)], base, mode, freq_scale, factors,
                      yarn_params);
    }
    std::copy(q.begin(), q.end(), ref_q.begin() + size_t(t) * q_dim);
    const int32_t slot = slots[size_t(t)];
    if (slot < 0) continue;
    for (int32_t h = 0; h < HK; ++h) {
      const size_t r = size_t(slot / bs * HK + h) * bs + size_t(slot % bs);
      // Each stored row decoded; f16 rows against the f16-rounded input. A block format's device
      // rows may differ from the host quantizer's where the kernel's RoPE differs in the last bit
      // at a rounding tie, so their values are checked against the codec's bound instead: ref is
      // the value nearest to the decoded one within codec_slack * d of the input (d the block's
      // scale), equal to it when the row is a valid encoding.
      for (const auto& [f, pool, rb, src] :
           {std::tuple<kv::KvFormat, const std::vector<uint8_t>*, size_t, const float*>{
                kf, &kp, k_rb, k.data() + size_t(h * D)},
            {vf, &vp, v_rb, row + v_col + size_t(h * D)}}) {
        std::vector<float> dec(static_cast<size_t>(D));
        reference::kv_decode_row(f, {pool->data() + r * rb, rb}, dec);
        if (kv::kv_format_traits(f).turbo_prod) {
          turbo_prod_row_check(f, {pool->data() + r * rb, rb}, {src, size_t(D)}, got_kv, ref_kv);
          continue;
        }
        if (kv::kv_format_traits(f).turbo()) {
          turbo_row_check(f, {pool->data() + r * rb, rb}, {src, size_t(D)}, got_kv, ref_kv);
          continue;
        }
        if (f == kv::KvFormat::kF16) {
          for (int32_t d = 0; d < D; ++d) {
            got_kv.push_back(dec[size_t(d)]);
            ref_kv.push_back(fp16_to_fp32(fp32_to_fp16(src[d])));
          }
          continue;
        }
        for (int32_t b = 0; b < D / 32; ++b) {
          float amax = 0.0f;
          for (int32_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(src[b * 32 + j]));
          const double step = amax / (f == kv::KvFormat::kQ8_0 ? 127.0 : 8.0);
          const double slack = codec_slack(f) * step + 1e-6;
          for (int32_t j = 0; j < 32; ++j) {
            const double x = src[b * 32 + j], g = dec[size_t(b * 32 + j)];
            got_kv.push_back(float(g));
            ref_kv.push_back(float(std::clamp(g, x - slack, x + slack)));
          }
        }
      }
    }
  }
  // Rows of unused slots must still be NaN (nothing written outside the tokens' slots).
  auto untouched_rows = [](const std::vector<uint8_t>& pool, size_t rb) {
    size_t count = 0;
    for (size_t r = 0; r < pool.size() / rb; ++r) {
      bool nan = true;
      for (size_t i = 0; i < rb && nan; ++i) nan = pool[r * rb + i] == (i % 2 ? 0x7E : 0x00);
      count += nan;
    }
    return count;
  };
  const size_t untouched = untouched_rows(kp, k_rb) + untouched_rows(vp, v_rb);
  const size_t expected_untouched = 2 * (size_t(n_blocks * bs * HK) - size_t(n - 1) * size_t(HK));
  std::vector<float> got = got_q, ref = ref_q;
  got.insert(got.end(), got_kv.begin(), got_kv.end());
  ref.insert(ref.end(), ref_kv.begin(), ref_kv.end());
  got.push_back(float(untouched));
  ref.push_back(float(expected_untouched));
  // theta reaches 3000 rad in float: its rounding bounds the error (as the rope cases); f16 K/V.
  MatrixCaseResult r = judge(compare(got, ref), 1e-3,
                             {qout.check_guard(), kpool.check_guard(), vpool.check_guard(),
                              src.check_guard(), ffb ? ffb->check_guard() : std::string()});
  r.bytes = double(n) * (stride * 4 + q_dim * 4 + kv_dim * 4);
  r.flops = double(n) * (q_dim + kv_dim) * 6;
  if (timing) {
    r.seconds = median_kernel_seconds(device, [&] {
      ClEvent ev;
      run({{}, ev.out()});
      return ev;
    });
  }
  return r;
}

std::string shape_name(const AttentionConfig& c, const std::vector<SeqSpec>& seqs) {
  std::string s = "h" + std::to_string(c.n_head) + "/" + std::to_string(c.pool.n_head_kv) + "xd" +
                  std::to_string(c.pool.head_dim) + "_bs" + std::to_string(c.pool.block_size) +
                  "_ctx";
  for (size_t i = 0; i < seqs.size(); ++i)
    s += (i ? "," : "") + std::to_string(seqs[i].past) + "+" + std::to_string(seqs[i].fresh);
  if (c.window > 0) s += "_win" + std::to_string(c.window);
  return s;
}

// The matrix's format column: "f16kv", "q8_0kv", or "kq8_0+vq4_0" when K and V differ.
std::string format_label(const AttentionConfig& c) {
  const std::string k(kv::kv_format_name(c.k_row_format())),
      v(kv::kv_format_name(c.v_row_format()));
  return k == v ? k + "kv" : "k" + k + "+v" + v;
}

AttentionConfig with_formats(AttentionConfig c, kv::KvFormat k, kv::KvFormat v) {
  c.pool.format = k;
  c.v_format = v;
  return c;
}

}  // namespace

void register_attention_cases(std::vector<MatrixCase>& out) {
  // Query heads; an f16 pool of KV heads, head_dim, block size.
  auto config = [](int32_t n_head, int32_t n_head_kv, int32_t head_dim, int32_t block_size) {
    return AttentionConfig{n_head, {kv::KvFormat::kF16, 0, block_size, n_head_kv, head_dim}};
  };
  const AttentionConfig shapes[] = {
      config(8, 4, 8, 16),    // stories260K-like
      config(8, 2, 64, 16),   // GQA
      config(4, 1, 128, 32),  // MQA, head 128, 32-token blocks
  };
  for (const auto& c : shapes) {
    // v 3, 4: RoPE frequency scaling (linear x4 with Qwen's form and q/k norms; Llama 3.1's
    // rope_freqs divisors with linear x2 in llama's form, partial rotary); v 5: YaRN x32 (gpt-oss:
    // NeoX, no q/k norm); v 6: no RoPE at all (n_rot 0: Granite 4.0-H's attention layers).
    for (int v = 0; v < 7; ++v) {
      const bool norm = v != 1 && v != 4 && v != 5 && v != 6, neox = v != 0 && v != 4 && v != 6;
      const int32_t D = c.pool.head_dim;
      const int32_t n_rot = v == 6 ? 0 : v == 2 || v == 4 ? D / 2 : D;  // partial rotary
      const float freq_scale = v == 3 ? 0.25f : v == 4 ? 0.5f : v == 5 ? 1.0f / 32.0f : 1.0f;
      const bool factors = v == 4, yarn = v == 5;
      const std::string shape = "h" + std::to_string(c.n_head) + "/" +
                                std::to_string(c.pool.n_head_kv) + "xd" + std::to_string(D) +
                                (norm ? "_norm" : "") + (neox ? "_neox" : "_normal") + "_rot" +
                                std::to_string(n_rot) +
                                (v == 3   ? "_linear0.25"
                                 : v == 4 ? "_linear0.5+freqs"
                                 : v == 5 ? "_yarn32"
                                          : "");
      for (bool other : {false, true}) {
        out.push_back(
            {other ? "qkv_finish_alt" : "qkv_finish", "f16kv", shape,
             [c, norm, neox, n_rot, other, freq_scale, factors, yarn](const Device& d, bool t) {
               return run_qkv_finish_case(d, t, c, norm, neox, n_rot, other, freq_scale, factors,
                                          yarn);
             }});
      }
    }
  }
  const std::vector<SeqSpec> prefill_seqs{{0, 37}, {21, 5}, {50, 17}};
  const std::vector<SeqSpec> decode_seqs{{700, 1}, {77, 1}, {0, 1}, {300, 1}};
  for (const auto& c : shapes) {
    out.push_back({"attention_prefill", "f16kv", shape_name(c, prefill_seqs),
                   [c, prefill_seqs](const Device& d, bool t) {
                     return run_attention_case(d, t, false, c, prefill_seqs);
                   }});
    out.push_back({"attention_decode", "f16kv", shape_name(c, decode_seqs),
                   [c, decode_seqs](const Device& d, bool t) {
                     return run_attention_case(d, t, true, c, decode_seqs);
                   }});
  }
  // Sliding windows (GQA and stories-like shapes): below the context (a query tile of one
  // sequence starts inside a block; decode chunks start at the window), at it, far past it; one
  // sequence and two.
  struct WindowCase {
    bool decode;
    int32_t window;
    std::vector<SeqSpec> seqs;
  };
  const WindowCase window_cases[] = {
      {false, 16, {{40, 30}}},          {false, 20, {{0, 37}, {50, 17}}},
      {false, 67, {{0, 37}, {50, 17}}}, {false, 4096, {{0, 37}, {50, 17}}},
      {true, 100, {{300, 1}}},          {true, 64, {{700, 1}, {33, 1}}},
      {true, 701, {{700, 1}, {33, 1}}}, {true, 5000, {{700, 1}, {33, 1}}},
  };
  for (const auto& base : {shapes[0], shapes[1]}) {
    for (const auto& w : window_cases) {
      AttentionConfig c = base;
      c.window = w.window;
      out.push_back({w.decode ? "attention_decode" : "attention_prefill", "f16kv",
                     shape_name(c, w.seqs), [c, w](const Device& d, bool t) {
                       return run_attention_case(d, t, w.decode, c, w.seqs);
                     }});
    }
  }

  // Compressed KV formats (block formats and TurboQuant; head sizes 64 and 128): the store through
  // both the plain KV write and qkv_finish (both kernel shapes), prefill and decode over the codes,
  // K and V in the same and in different formats, and one sliding window each way.
  using kv::KvFormat;
  const std::pair<KvFormat, KvFormat> format_pairs[] = {
      {KvFormat::kQ8_0, KvFormat::kQ8_0},         {KvFormat::kQ4_0, KvFormat::kQ4_0},
      {KvFormat::kQ8_0, KvFormat::kQ4_0},         {KvFormat::kF16, KvFormat::kQ8_0},
      {KvFormat::kTurbo2, KvFormat::kTurbo2},     {KvFormat::kTurbo3, KvFormat::kTurbo3},
      {KvFormat::kTurbo4, KvFormat::kTurbo4},     {KvFormat::kTurbo2_5, KvFormat::kTurbo2_5},
      {KvFormat::kTurbo3_5, KvFormat::kTurbo3_5}, {KvFormat::kQ8_0, KvFormat::kTurbo3},
      {KvFormat::kTurbo4, KvFormat::kTurbo3},     {KvFormat::kTurbo3p, KvFormat::kTurbo3},
      {KvFormat::kTurbo4p, KvFormat::kTurbo3},
  };
  for (const auto& [kf, vf] : format_pairs) {
    for (const auto& base : {shapes[1], shapes[2]}) {
      const AttentionConfig c = with_formats(base, kf, vf);
      const std::string label = format_label(c);
      out.push_back({"attention_prefill", label, shape_name(c, prefill_seqs),
                     [c, prefill_seqs](const Device& d, bool t) {
                       return run_attention_case(d, t, false, c, prefill_seqs);
                     }});
      out.push_back({"attention_decode", label, shape_name(c, decode_seqs),
                     [c, decode_seqs](const Device& d, bool t) {
                       return run_attention_case(d, t, true, c, decode_seqs);
                     }});
      const int32_t D = c.pool.head_dim;
      for (bool other : {false, true}) {
        out.push_back({other ? "qkv_finish_alt" : "qkv_finish", label,
                       "h" + std::to_string(c.n_head) + "/" + std::to_string(c.pool.n_head_kv) +
                           "xd" + std::to_string(D) + "_norm_neox_rot" + std::to_string(D),
                       [c, other, D](const Device& d, bool t) {
                         return run_qkv_finish_case(d, t, c, true, true, D, other, 1.0f, false,
                                                    false);
                       }});
      }
    }
    const AttentionConfig c = with_formats(shapes[1], kf, vf);
    for (const WindowCase& w : {window_cases[1], window_cases[5]}) {
      AttentionConfig cw = c;
      cw.window = w.window;
      out.push_back({w.decode ? "attention_decode" : "attention_prefill", format_label(cw),
                     shape_name(cw, w.seqs), [cw, w](const Device& d, bool t) {
                       return run_attention_case(d, t, w.decode, cw, w.seqs);
                     }});
    }
  }
  // TurboQuant at head sizes the block formats cannot take: 8 (stories260K; one rotation stage of
  // 8) and 96, 40 (three overlapping power-of-two stages).
  for (const AttentionConfig& base : {shapes[0], config(6, 2, 96, 16), config(4, 2, 40, 16)}) {
    for (const auto& [kf, vf] : {std::pair{KvFormat::kTurbo3, KvFormat::kTurbo3},
                                 std::pair{KvFormat::kTurbo4, KvFormat::kTurbo2},
                                 std::pair{KvFormat::kTurbo3p, KvFormat::kTurbo3}}) {
      const AttentionConfig c = with_formats(base, kf, vf);
      const std::string label = format_label(c);
      out.push_back({"attention_prefill", label, shape_name(c, prefill_seqs),
                     [c, prefill_seqs](const Device& d, bool t) {
                       return run_attention_case(d, t, false, c, prefill_seqs);
                     }});
      out.push_back({"attention_decode", label, shape_name(c, decode_seqs),
                     [c, decode_seqs](const Device& d, bool t) {
                       return run_attention_case(d, t, true, c, decode_seqs);
                     }});
      const int32_t D = c.pool.head_dim;
      out.push_back({"qkv_finish", label,
                     "h" + std::to_string(c.n_head) + "/" + std::to_string(c.pool.n_head_kv) +
                         "xd" + std::to_string(D) + "_norm_neox_rot" + std::to_string(D),
                     [c, D](const Device& d, bool t) {
                       return run_qkv_finish_case(d, t, c, true, true, D, false, 1.0f, false,
                                                  false);
                     }});
    }
  }
  // The decode variants other than the device's default (AttentionTuning::decode_variant,
  // decode_lut, the other kernel shape, the chunks combined by a reduce launch rather than in the
  // decode launch) over the formats' distinct decode paths: f16 and a block format, TurboQuant K
  // and V of 2, 3, 4 bits and mixed widths, head sizes 8 to 128.
  const DecodeTweak tweaks[] = {{"_v1", false, 1, false},
                                {"_v1lut", false, 1, true},
                                {"_altkernel_v1lut", true, 1, true},
                                {"_reducelaunch", false, -1, false, true},
                                {"_altkernel_reducelaunch", true, -1, false, true}};
  for (const DecodeTweak& tw : tweaks) {
    std::vector<AttentionConfig> configs{shapes[1], shapes[2]};
    for (const auto& [kf, vf] : {std::pair{KvFormat::kTurbo3_5, KvFormat::kTurbo3_5},
                                 std::pair{KvFormat::kTurbo2, KvFormat::kTurbo2},
                                 std::pair{KvFormat::kQ8_0, KvFormat::kTurbo3},
                                 std::pair{KvFormat::kTurbo4, KvFormat::kTurbo3},
                                 std::pair{KvFormat::kTurbo3p, KvFormat::kTurbo3}})
      configs.push_back(with_formats(shapes[1], kf, vf));
    configs.push_back(with_formats(shapes[2], KvFormat::kTurbo4p, KvFormat::kTurbo4));
    for (const AttentionConfig& base :
         {shapes[2], shapes[0], config(6, 2, 96, 16), config(4, 2, 40, 16)})
      configs.push_back(with_formats(base, KvFormat::kTurbo3, KvFormat::kTurbo3));
    for (const AttentionConfig& c : configs)
      out.push_back({"attention_decode", format_label(c), shape_name(c, decode_seqs) + tw.name,
                     [c, decode_seqs, tw](const Device& d, bool t) {
                       return run_attention_case(d, t, true, c, decode_seqs, false, tw);
                     }});
    AttentionConfig cw = with_formats(shapes[1], KvFormat::kTurbo3, KvFormat::kTurbo3);
    cw.window = window_cases[5].window;
    out.push_back({"attention_decode", format_label(cw),
                   shape_name(cw, window_cases[5].seqs) + "_sinks" + tw.name,
                   [cw, w = window_cases[5], tw](const Device& d, bool t) {
                     return run_attention_case(d, t, true, cw, w.seqs, true, tw);
                   }});
  }
  // Attention sinks (gpt-oss): whole context and a window below, at and past the context, on the
  // GQA shape; prefill and decode.
  const WindowCase sink_cases[] = {
      {false, 0, {{0, 37}, {21, 5}, {50, 17}}},
      {true, 0, {{700, 1}, {77, 1}, {0, 1}, {300, 1}}},
      {false, 20, {{0, 37}, {50, 17}}},
      {true, 64, {{700, 1}, {33, 1}}},
  };
  for (const auto& base : {shapes[0], shapes[1]}) {
    for (const auto& w : sink_cases) {
      AttentionConfig c = base;
      c.window = w.window;
      out.push_back({w.decode ? "attention_decode" : "attention_prefill", "f16kv",
                     shape_name(c, w.seqs) + "_sinks", [c, w](const Device& d, bool t) {
                       return run_attention_case(d, t, w.decode, c, w.seqs, true);
                     }});
    }
  }
  // The finish in the decode launch (AttentionOp::DecodeFinish), as a kernel row of its own
  // ("attention_decode_finish"): the three RoPE / norm forms on the GQA shape and Qwen3's on the
  // other two, Qwen3's over block and TurboQuant formats (rotated K and V, prod keys), the other
  // decode kernel shape and the shared value pass, a window with sinks. Programs of their own
  // (AttentionTuning::decode_finish); otherwise the device's tuning where the plain decode cases
  // have it.
  {
    const DecodeTweak norm_neox{"_norm_neox", false, -1, false, false, 0, 0, 1},
        half_rot{"_half_rot", false, -1, false, false, 0, 0, 2},
        norm_norot{"_norm_norot", false, -1, false, false, 0, 0, 3},
        altkernel{"_norm_neox_altkernel", true, -1, false, false, 0, 0, 1},
        shared{"_norm_neox_v1", false, 1, false, false, 0, 0, 1};
    const std::pair<AttentionConfig, DecodeTweak> finish_cases[] = {
        {shapes[1], norm_neox},
        {shapes[1], half_rot},
        {shapes[1], norm_norot},
        {shapes[0], norm_neox},
        {shapes[2], half_rot},
        {with_formats(shapes[1], KvFormat::kQ8_0, KvFormat::kQ4_0), norm_neox},
        {with_formats(shapes[1], KvFormat::kTurbo3, KvFormat::kTurbo3), norm_neox},
        {with_formats(shapes[1], KvFormat::kTurbo3p, KvFormat::kTurbo3), norm_neox},
        {with_formats(shapes[2], KvFormat::kTurbo4p, KvFormat::kTurbo4), norm_neox},
        {with_formats(shapes[1], KvFormat::kTurbo3, KvFormat::kTurbo3), altkernel},
        {shapes[1], shared},
    };
    for (const auto& [c, tw] : finish_cases)
      out.push_back({"attention_decode_finish", format_label(c),
                     shape_name(c, decode_seqs) + tw.name,
                     [c, decode_seqs, tw](const Device& d, bool t) {
                       return run_attention_case(d, t, true, c, decode_seqs, false, tw);
                     }});
    AttentionConfig cw = shapes[1];
    cw.window = window_cases[5].window;
    out.push_back({"attention_decode_finish", format_label(cw),
                   shape_name(cw, window_cases[5].seqs) + "_sinks" + norm_neox.name,
                   [cw, w = window_cases[5], tw = norm_neox](const Device& d, bool t) {
                     return run_attention_case(d, t, true, cw, w.seqs, true, tw);
                   }});
  }
  // The prefill kernel's other shapes on every device: the GPUs' register-blocked form (items per
  // row > 1) and the CPUs' (1 item per row), with keys tiles of two blocks (a block-table read
  // per key row, released blocks before a window skipped) and of half a block.
  struct PrefillCase {
    AttentionConfig c;
    std::vector<SeqSpec> seqs;
    bool sinks;
  };
  std::vector<PrefillCase> prefill_cases;
  for (const auto& c : shapes) prefill_cases.push_back({c, prefill_seqs, false});
  prefill_cases.push_back(
      {with_formats(shapes[1], KvFormat::kTurbo3, KvFormat::kTurbo3), prefill_seqs, false});
  prefill_cases.push_back(
      {with_formats(shapes[1], KvFormat::kTurbo3p, KvFormat::kTurbo4), prefill_seqs, false});
  prefill_cases.push_back(
      {with_formats(shapes[2], KvFormat::kQ8_0, KvFormat::kQ4_0), prefill_seqs, false});
  for (int wi : {0, 1, 2}) {
    AttentionConfig c = shapes[1];
    c.window = window_cases[wi].window;
    prefill_cases.push_back({c, window_cases[wi].seqs, wi == 1});
  }
  for (const PrefillCase& pc : prefill_cases) {
    const int32_t bs = pc.c.pool.block_size, D = pc.c.pool.head_dim;
    const int32_t wide = D % 8 == 0 ? 8 : 4;
    const DecodeTweak shapes_pf[] = {{"_tpr4_kt2b", false, -1, false, false, 4, 2 * bs},
                                     {"_tpr1_kt2b", false, -1, false, false, 1, 2 * bs},
                                     {"_tprw_kthalf", false, -1, false, false, wide, bs / 2}};
    for (const DecodeTweak& tw : shapes_pf) {
      out.push_back({"attention_prefill", format_label(pc.c),
                     shape_name(pc.c, pc.seqs) + (pc.sinks ? "_sinks" : "") + tw.name,
                     [pc, tw](const Device& d, bool t) {
                       return run_attention_case(d, t, false, pc.c, pc.seqs, pc.sinks, tw);
                     }});
    }
  }
}

}  // namespace tessera::ops
