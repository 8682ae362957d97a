// Test harness for the attention kernels: a paged cache on one device plus a host mirror of every
// sequence's K/V history (f16-rounded, as the cache stores it), so each step's kernel outputs can
// be checked against reference::causal_attention over contiguous history.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <vector>

#include "host/common/half.h"
#include "host/kv/kv_batch.h"
#include "host/kv/paged_kv_cache.h"
#include "host/ops/device/attention.h"
#include "host/ops/reference/attention.h"
#include "host/ops/reference/kv_codec.h"

namespace tessera::test {

using kv::SeqId;

// How a step's tokens are attended.
enum class AttnKernel {
  kPrefill,  // the flash prefill kernel over the whole batch
  kDecode,   // the split-K decode kernel over the whole batch
  kMixed,    // per batch entry: decode kernel for 1-token entries, prefill for longer ones
};

struct StepEntry {
  SeqId seq;
  int32_t n_new;  // tokens this sequence adds (and attends with) in the step
};

struct StepError {
  double max_rel = 0;  // max |got - ref| / max |ref|
  size_t nonfinite = 0;
  bool guard_ok = true;
};

inline float round_f16(float x) {
  return fp16_to_fp32(fp32_to_fp16(x));
}

// An attention shape over an f16 pool (the pool's block count comes from the cache).
inline ops::AttentionConfig attention_config(int32_t n_head, int32_t n_head_kv, int32_t head_dim,
                                             int32_t block_size) {
  return {n_head, {kv::KvFormat::kF16, 0, block_size, n_head_kv, head_dim}};
}

// `config` with the pool layout of the cache that holds the K/V (one source for the layout).
inline ops::AttentionConfig over_pool(ops::AttentionConfig config, const kv::PagedKvCache& cache) {
  config.pool = cache.layout();
  return config;
}

class AttentionHarness {
 public:
  // The cache is built from config.pool (with n_blocks) and config.window (a window cache releases
  // the blocks that fall out of it), the op from the cache's layout.
  // `poison`: fill the pools with f16 NaN first, so reading a slot no token wrote shows up.
  AttentionHarness(const Device& device, const ops::AttentionConfig& config, int32_t n_blocks,
                   bool poison = true, int32_t n_layer = 1,
                   std::optional<ops::AttentionTuning> tuning = std::nullopt)
      : device_(device),
        config_(config),
        cache_({n_layer,
                config.pool.n_head_kv,
                config.pool.head_dim,
                config.pool.block_size,
                n_blocks,
                config.k_row_format(),
                config.v_row_format(),
                {},
                std::vector<int32_t>(size_t(n_layer), config.window)},
               std::vector<const Device*>(size_t(n_layer), &device)),
        op_(device, over_pool(config, cache_), tuning),
        batch_(device) {
    if (poison) {
      // Every format's rows start at an even byte with an f16 (element or block scale).
      const uint16_t nan = 0x7E00;
      for (int32_t l = 0; l < n_layer; ++l)
        for (kv::KvPart part : {kv::KvPart::kK, kv::KvPart::kV})
          CL_CHECK(
              clEnqueueFillBuffer(
                  device.queue(), part == kv::KvPart::kK ? cache_.layer(l).k : cache_.layer(l).v,
                  &nan, 2, 0, cache_.layout(l, part).pool_bytes(), 0, nullptr, nullptr),
              device.id());
    }
  }

  kv::PagedKvCache& cache() { return cache_; }
  ops::AttentionOp& op() { return op_; }

  SeqId create() {
    SeqId s = cache_.create_sequence();
    k_[s], v_[s];
    return s;
  }
  SeqId fork(SeqId parent) {
    SeqId s = cache_.fork_sequence(parent);
    k_[s] = k_[parent];
    v_[s] = v_[parent];
    return s;
  }
  void free(SeqId s) {
    cache_.free_sequence(s);
    k_.erase(s);
    v_.erase(s);
  }

  // One forward step: reserves, writes K/V with the kv_write kernel, runs attention, compares.
  // `interleave` moves the first entry's last token to the end of the batch (tokens of one
  // sequence not consecutive). Also checks the pool holds the f16 of what was written.
  StepError step(const std::vector<StepEntry>& entries, AttnKernel kernel, uint32_t seed,
                 bool interleave = false) {
    const int32_t H = config_.n_head, HK = config_.pool.n_head_kv, D = config_.pool.head_dim;
    std::vector<SeqId> seqs;
    std::vector<int32_t> tseq, tpos;
    std::vector<std::pair<int32_t, int32_t>> ranges;  // per entry: first batch token, count
    for (size_t e = 0; e < entries.size(); ++e) {
      const std::vector<int32_t> before(cache_.blocks().block_table(entries[e].seq).begin(),
                                        cache_.blocks().block_table(entries[e].seq).end());
      kv::KvReservation r = cache_.reserve(entries[e].seq, entries[e].n_new);
      // Blocks the window released (and nobody else holds) are poisoned: a kernel that still
      // reads one through a stale table gets NaN.
      for (size_t b = 0; b < before.size(); ++b)
        if (before[b] >= 0 && cache_.blocks().block_table(entries[e].seq)[b] < 0 &&
            cache_.blocks().block_refs(before[b]) == 0)
          poison_block(before[b]);
      seqs.push_back(entries[e].seq);
      ranges.push_back({int32_t(tseq.size()), entries[e].n_new});
      for (int32_t i = 0; i < entries[e].n_new; ++i) {
        tseq.push_back(int32_t(e));
        tpos.push_back(r.first_pos + i);
      }
    }
    std::vector<int32_t> order(tseq.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = int32_t(i);
    if (interleave && entries.size() > 1 && entries[0].n_new > 1) {
      order.erase(order.begin() + entries[0].n_new - 1);
      order.push_back(entries[0].n_new - 1);
    }
    const size_t T = tseq.size();
    std::vector<int32_t> bseq(T), bpos(T);
    for (size_t i = 0; i < T; ++i) {
      bseq[i] = tseq[size_t(order[i])];
      bpos[i] = tpos[size_t(order[i])];
    }
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> q(T * H * D), k(T * HK * D), v(T * HK * D);
    for (float& x : q) x = 2.0f * u(rng);  // peaky enough softmax to make masking errors visible
    for (float& x : k) x = u(rng);
    for (float& x : v) x = u(rng);
    // Host mirror: histories grow by the rows as the pools' formats store them, in position order.
    const std::vector<float> k_stored = reference::kv_round_trip(config_.k_row_format(), k, D),
                             v_stored = reference::kv_round_trip(config_.v_row_format(), v, D);
    for (size_t i = 0; i < T; ++i) {
      const SeqId s = seqs[size_t(bseq[i])];
      auto& hk = k_[s];
      auto& hv = v_[s];
      const size_t need = size_t(bpos[i] + 1) * HK * D;
      if (hk.size() < need) {
        hk.resize(need);
        hv.resize(need);
      }
      for (int32_t j = 0; j < HK * D; ++j) {
        hk[size_t(bpos[i]) * HK * D + j] = k_stored[i * HK * D + j];
        hv[size_t(bpos[i]) * HK * D + j] = v_stored[i * HK * D + j];
      }
    }

    kv::KvBatchView view = batch_.upload(cache_.blocks(), seqs, bseq, bpos);
    ClMem qb = device_.alloc(q.size() * 4), kb = device_.alloc(k.size() * 4),
          vb = device_.alloc(v.size() * 4);
    const size_t out_floats = q.size();
    constexpr size_t kGuard = 256;
    ClMem ob = device_.alloc((out_floats + kGuard) * 4);
    device_.write(qb.get(), 0, q.data(), q.size() * 4);
    device_.write(kb.get(), 0, k.data(), k.size() * 4);
    device_.write(vb.get(), 0, v.data(), v.size() * 4);
    std::vector<float> sentinel(out_floats + kGuard, -12345.0f);
    device_.write(ob.get(), 0, sentinel.data(), sentinel.size() * 4);

    const kv::KvLayerView layer = cache_.layer(0);
    op_.write_kv(view, layer, kb.get(), 0, vb.get(), 0, 0, int32_t(T));
    ClMem ws;
    size_t ws_bytes = 0;
    auto ensure_ws = [&] {
      if (!ws) {
        ws_bytes = op_.decode_workspace_bytes(int32_t(T), view.context_capacity);
        ws = device_.alloc(ws_bytes);
      }
    };
    if (kernel == AttnKernel::kPrefill) {
      op_.prefill(view, layer, qb.get(), 0, ob.get(), 0, 0, int32_t(T));
    } else if (kernel == AttnKernel::kDecode) {
      ensure_ws();
      op_.decode(view, layer, qb.get(), 0, ob.get(), 0, 0, int32_t(T), ws.get(), ws_bytes);
    } else {
      EXPECT_FALSE(interleave) << "kMixed needs each entry's tokens consecutive";
      for (auto [first, n] : ranges) {
        if (n == 1) {
          ensure_ws();
          op_.decode(view, layer, qb.get(), 0, ob.get(), 0, first, n, ws.get(), ws_bytes);
        } else {
          op_.prefill(view, layer, qb.get(), 0, ob.get(), 0, first, n);
        }
      }
    }
    std::vector<float> out(out_floats + kGuard);
    device_.read(ob.get(), 0, out.data(), out.size() * 4);

    StepError err;
    for (size_t i = out_floats; i < out.size(); ++i) err.guard_ok &= out[i] == -12345.0f;
    // Pool contents: every written slot holds its K row in the pool's format (decoded by the
    // scalar codec; the device quantizes with the host quantizer's arithmetic).
    {
      const kv::KvPoolLayout& L = cache_.layout(0, kv::KvPart::kK);
      const size_t rb = size_t(L.token_head_bytes());
      std::vector<uint8_t> pool(L.pool_bytes());
      device_.read(layer.k, 0, pool.data(), pool.size());
      const auto& slots = batch_.host_slots();
      const int32_t bs = config_.pool.block_size;
      std::vector<float> row(static_cast<size_t>(D));
      for (size_t i = 0; i < T; ++i)
        for (int32_t h = 0; h < HK; ++h) {
          const size_t at = (size_t(slots[i] / bs) * HK + h) * bs + slots[i] % bs;
          reference::kv_decode_row(L.format, {pool.data() + at * rb, rb}, row);
          for (int32_t d = 0; d < D; ++d)
            if (row[size_t(d)] != k_stored[(i * HK + h) * D + d]) {
              ADD_FAILURE() << "pool slot " << slots[i] << " head " << h << " dim " << d
                            << " holds " << row[size_t(d)] << ", not the "
                            << kv::kv_format_name(L.format) << " of the written K ("
                            << k_stored[(i * HK + h) * D + d] << ")";
              return err;
            }
        }
    }
    // Reference per entry: its tokens, sorted by position, are the last rows of its history.
    double max_ref = 0, max_diff = 0;
    for (size_t e = 0; e < entries.size(); ++e) {
      std::vector<size_t> rows;  // batch rows of this entry in position order
      for (size_t i = 0; i < T; ++i)
        if (bseq[i] == int32_t(e)) rows.push_back(i);
      std::sort(rows.begin(), rows.end(), [&](size_t a, size_t b) { return bpos[a] < bpos[b]; });
      const int32_t last = bpos[rows.back()];
      const SeqId s = entries[e].seq;
      std::vector<float> qe, ref(rows.size() * H * D);
      for (size_t r : rows)
        qe.insert(qe.end(), q.begin() + ptrdiff_t(r * H * D),
                  q.begin() + ptrdiff_t((r + 1) * H * D));
      const size_t kv_len = size_t(last + 1) * HK * D;
      std::span<const float> ks(k_[s].data(), kv_len), vs(v_[s].data(), kv_len);
      reference::causal_attention(qe, ks, vs, {H, HK, D}, op_.scale(), ref, config_.window);
      for (size_t ri = 0; ri < rows.size(); ++ri)
        for (int32_t j = 0; j < H * D; ++j) {
          const float g = out[rows[ri] * H * D + j], rv = ref[ri * H * D + j];
          if (!std::isfinite(g)) ++err.nonfinite;
          max_ref = std::max(max_ref, double(std::fabs(rv)));
          max_diff = std::max(max_diff, double(std::fabs(g - rv)));
        }
    }
    err.max_rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    return err;
  }

 private:
  void poison_block(int32_t block) {
    const uint16_t nan = 0x7E00;
    for (int32_t l = 0; l < cache_.config().n_layer; ++l)
      for (kv::KvPart part : {kv::KvPart::kK, kv::KvPart::kV}) {
        const size_t bytes = size_t(cache_.layout(l, part).block_bytes());
        CL_CHECK(clEnqueueFillBuffer(device_.queue(),
                                     part == kv::KvPart::kK ? cache_.layer(l).k : cache_.layer(l).v,
                                     &nan, 2, size_t(block) * bytes, bytes, 0, nullptr, nullptr),
                 device_.id());
      }
  }

  const Device& device_;
  ops::AttentionConfig config_;
  kv::PagedKvCache cache_;
  ops::AttentionOp op_;
  kv::KvBatchBuffers batch_;
  std::map<SeqId, std::vector<float>> k_, v_;  // stored history [pos][n_head_kv][head_dim]
};

// Tolerance of the normalized max error: K/V hold the same stored values in both paths (f16 or
// the same block codes), so only f32 summation order and exp differ.
constexpr double kAttnTolerance = 1e-5;

#define EXPECT_STEP_OK(expr)                                \
  do {                                                      \
    const ::tessera::test::StepError e_ = (expr);           \
    EXPECT_TRUE(e_.guard_ok) << "write past the output";    \
    EXPECT_EQ(e_.nonfinite, 0u);                            \
    EXPECT_LE(e_.max_rel, ::tessera::test::kAttnTolerance); \
  } while (0)

}  // namespace tessera::test
