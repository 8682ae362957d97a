// PagedKvCache and KvBatchBuffers on every OpenCL device: pool sizes, copy-on-write copies on the
// device, batch descriptions (contents and validation), config errors.
#include "host/kv/paged_kv_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "host/cli/settings.h"
#include "host/kv/kv_batch.h"

namespace tessera::kv {
namespace {

DeviceRegistry& registry() {
  static DeviceRegistry reg = tessera::cli::discover_devices();
  return reg;
}

TEST(PagedKvCache, ConfigErrors) {
  const Device* d = registry().devices().front().get();
  KvCacheConfig c{2, 2, 8, 4, 8, KvFormat::kF16};
  EXPECT_THROW(PagedKvCache(c, {d}), KvCacheUsageError);  // 1 device for 2 layers
  KvCacheConfig bad = c;
  bad.head_dim = 0;
  EXPECT_THROW(PagedKvCache(bad, {d, d}), KvCacheUsageError);
  KvCacheConfig huge = c;
  huge.n_blocks = int32_t(d->info().max_alloc_bytes / (2 * 2 * 8 * 4) + 16);
  try {
    PagedKvCache cache(huge, {d, d});
    FAIL() << "expected a max-allocation error";
  } catch (const KvCacheUsageError& e) {
    EXPECT_NE(std::string(e.what()).find("max allocation"), std::string::npos) << e.what();
  }
  EXPECT_EQ(kv_bytes_per_block(c), 2u * 2 * (2 * 4 * 8 * 2));
  EXPECT_EQ(kv_format_from_name("f16"), KvFormat::kF16);
  EXPECT_EQ(kv_format_from_name("Q8_0"), KvFormat::kQ8_0);
  EXPECT_EQ(kv_format_from_name("q4_0"), KvFormat::kQ4_0);
  EXPECT_EQ(kv_format_from_name("turbo3.5"), KvFormat::kTurbo3_5);
  EXPECT_EQ(kv_format_from_name("TURBO2"), KvFormat::kTurbo2);
  EXPECT_FALSE(kv_format_from_name("q3_x").has_value());
  EXPECT_FALSE(kv_format_from_name("turbo5").has_value());
}

// K and V formats chosen separately and per layer: row bytes are ggml's block sizes (q8_0: 34
// bytes per 32 values, q4_0: 18), the per-block cost sums every layer's K and V.
TEST(PagedKvCache, FormatsPerPartAndLayer) {
  const Device* d = registry().devices().front().get();
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kF16, 64), 128u);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kQ8_0, 64), 68u);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kQ4_0, 64), 36u);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kQ4_0, 48), 0u);
  // TurboQuant: f16 norm + codes (8 per `bits` bytes), padded to even; the split formats' first
  // quarter at the higher width.
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo2, 64), 2u + 16);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3, 64), 2u + 24);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo4, 64), 2u + 32);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo2_5, 128), 2u + 12 + 24);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3_5, 128), 2u + 16 + 36);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3_5, 64), 2u + 8 + 18);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3_5, 32), 2u + 14);  // 13 padded
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3, 8), 2u + 4);      // 3 padded
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3, 12), 0u);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3_5, 48), 0u);
  // Prod keys: norm, mse codes of one bit less, d / 8 sign bytes, f16 residual norm, padded.
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3p, 128), 2u + 32 + 16 + 2);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo4p, 128), 2u + 48 + 16 + 2);
  EXPECT_EQ(kv_bytes_per_token_head(KvFormat::kTurbo3p, 8), 2u + 2 + 1 + 2 + 1);
  EXPECT_EQ(kv_format_from_name("turbo3p"), KvFormat::kTurbo3p);
  EXPECT_EQ(kv_format_value_problem(KvFormat::kTurbo3), "");
  EXPECT_NE(kv_format_value_problem(KvFormat::kTurbo4p).find("key-only"), std::string::npos);
  // turbo3.5 at head size 128 is at least 4.5x smaller than f16 (256 / 54 = 4.74).
  EXPECT_GE(double(kv_bytes_per_token_head(KvFormat::kF16, 128)) /
                double(kv_bytes_per_token_head(KvFormat::kTurbo3_5, 128)),
            4.5);
  KvCacheConfig c{3, 2, 64, 4, 6, KvFormat::kQ8_0, KvFormat::kQ4_0};
  c.layer_k_format = {KvFormat::kF16, KvFormat::kQ8_0, KvFormat::kF16};
  PagedKvCache cache(c, {d, d, d});
  EXPECT_EQ(cache.layout(0, KvPart::kK).format, KvFormat::kF16);
  EXPECT_EQ(cache.layout(1, KvPart::kK).format, KvFormat::kQ8_0);
  EXPECT_EQ(cache.layout(1, KvPart::kV).format, KvFormat::kQ4_0);
  EXPECT_EQ(cache.layout(1, KvPart::kK).block_bytes(), 68u * 2 * 4);
  EXPECT_EQ(kv_bytes_per_block(c), (2 * 128u + 68u + 3 * 36u) * 2 * 4);
  KvCacheConfig bad = c;
  bad.layer_v_format = {KvFormat::kF16};
  EXPECT_THROW(PagedKvCache(bad, {d, d, d}), KvCacheUsageError);  // 1 entry for 3 layers
  KvCacheConfig prod_v = c;
  prod_v.layer_v_format = {KvFormat::kF16, KvFormat::kTurbo3p, KvFormat::kF16};
  try {
    PagedKvCache cache(prod_v, {d, d, d});
    FAIL() << "expected a key-only format error";
  } catch (const KvCacheUsageError& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1 V"), std::string::npos) << e.what();
  }
}

TEST(PagedKvCache, CopyOnWriteCopiesEveryLayerOnDevice) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    const Device* d = dev.get();
    KvCacheConfig c{3, 2, 8, 4, 6, KvFormat::kF16};
    PagedKvCache cache(c, {d, d, d});
    const KvPoolLayout& L = cache.layout();
    ASSERT_EQ(L.block_bytes(), 2u * 4 * 8 * 2);
    // Pools start zeroed.
    std::vector<uint16_t> pool(L.pool_bytes() / 2, 1);
    d->read(cache.layer(1).v, 0, pool.data(), L.pool_bytes());
    for (uint16_t x : pool) ASSERT_EQ(x, 0);

    SeqId p = cache.create_sequence();
    cache.reserve(p, 6);  // blocks 0 (full) and 1 (half)
    const int32_t partial = cache.blocks().block_table(p)[1];
    // Fill every layer's pools with a distinct pattern per layer and pool.
    for (int l = 0; l < 3; ++l) {
      for (int kv = 0; kv < 2; ++kv) {
        std::vector<uint16_t> data(L.pool_bytes() / 2);
        std::iota(data.begin(), data.end(), uint16_t(1000 * (l * 2 + kv + 1)));
        d->write(kv ? cache.layer(l).v : cache.layer(l).k, 0, data.data(), L.pool_bytes());
      }
    }
    SeqId c1 = cache.fork_sequence(p);
    KvReservation r = cache.reserve(c1, 2);
    ASSERT_EQ(r.copies.size(), 1u);
    const int32_t dst = r.copies[0].dst;
    d->finish();
    const size_t bh = L.block_bytes() / 2;  // halfs per block
    for (int l = 0; l < 3; ++l) {
      for (int kv = 0; kv < 2; ++kv) {
        d->read(kv ? cache.layer(l).v : cache.layer(l).k, 0, pool.data(), L.pool_bytes());
        for (size_t i = 0; i < bh; ++i)
          ASSERT_EQ(pool[size_t(dst) * bh + i], pool[size_t(partial) * bh + i]) << "layer " << l;
        EXPECT_EQ(pool[size_t(dst) * bh], uint16_t(1000 * (l * 2 + kv + 1) + partial * bh));
      }
    }
    cache.free_sequence(p);
    cache.free_sequence(c1);
    EXPECT_EQ(cache.blocks().blocks_free(), 6);
  }
}

// Every format pages alike: rows are opaque bytes to the cache, so allocation, prefix sharing
// (copy-on-write copies every byte of the block: codes, norms, scales, signs), exhaustion (an error
// that changes no pool byte) and freeing work the same whatever K and V store. A key-only format
// is paired with turbo3 values.
TEST(PagedKvCache, EveryFormatPagesSharesAndExhaustsOnDevice) {
  for (const auto& dev : registry().devices()) {
    const Device* d = dev.get();
    for (KvFormat kf : kAllKvFormats) {
      const KvFormat vf = kv_format_value_problem(kf).empty() ? kf : KvFormat::kTurbo3;
      SCOPED_TRACE(dev->id() + " K " + std::string(kv_format_name(kf)) + " V " +
                   std::string(kv_format_name(vf)));
      PagedKvCache cache({2, 2, 64, 4, 3, kf, vf}, {d, d});
      auto pool_of = [&](int l, int kv) { return kv ? cache.layer(l).v : cache.layer(l).k; };
      auto layout_of = [&](int l, int kv) { return cache.layout(l, kv ? KvPart::kV : KvPart::kK); };
      EXPECT_EQ(layout_of(0, 0).token_head_bytes(), kv_bytes_per_token_head(kf, 64));
      EXPECT_EQ(layout_of(1, 1).token_head_bytes(), kv_bytes_per_token_head(vf, 64));
      SeqId p = cache.create_sequence();
      cache.reserve(p, 6);  // blocks 0 (full) and 1 (half)
      const int32_t partial = cache.blocks().block_table(p)[1];
      std::vector<std::vector<uint8_t>> before(4);
      for (int l = 0; l < 2; ++l)
        for (int kv = 0; kv < 2; ++kv) {
          std::vector<uint8_t>& b = before[size_t(l * 2 + kv)];
          b.resize(layout_of(l, kv).pool_bytes());
          for (size_t i = 0; i < b.size(); ++i) b[i] = uint8_t(i * 131 + size_t(l * 2 + kv) * 17);
          d->write(pool_of(l, kv), 0, b.data(), b.size());
        }
      SeqId c1 = cache.fork_sequence(p);
      const KvReservation r = cache.reserve(c1, 2);
      ASSERT_EQ(r.copies.size(), 1u);
      const int32_t dst = r.copies[0].dst;
      // All 3 blocks are taken: a new sequence cannot get one, and nothing moves.
      SeqId s3 = cache.create_sequence();
      EXPECT_FALSE(cache.try_reserve(s3, 1).has_value());
      EXPECT_THROW(cache.reserve(s3, 1), KvCacheFullError);
      d->finish();
      for (int l = 0; l < 2; ++l)
        for (int kv = 0; kv < 2; ++kv) {
          const uint64_t bb = layout_of(l, kv).block_bytes();
          std::vector<uint8_t> want = before[size_t(l * 2 + kv)], got(want.size());
          std::copy_n(want.begin() + ptrdiff_t(uint64_t(partial) * bb), bb,
                      want.begin() + ptrdiff_t(uint64_t(dst) * bb));
          d->read(pool_of(l, kv), 0, got.data(), got.size());
          EXPECT_EQ(got, want) << "layer " << l << (kv ? " V" : " K");
        }
      cache.free_sequence(p);
      cache.free_sequence(c1);
      cache.free_sequence(s3);
      EXPECT_EQ(cache.blocks().blocks_free(), 3);
    }
  }
}

TEST(KvBatchBuffers, UploadsTablesAndDerivesSlots) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    const Device* d = dev.get();
    PagedKvCache cache({1, 1, 8, 4, 16, KvFormat::kF16}, {d});
    SeqId a = cache.create_sequence(), b = cache.create_sequence();
    cache.reserve(a, 9);
    KvReservation rb = cache.reserve(b, 2);
    KvBatchBuffers batch(*d);
    // b decodes position 1; a prefills positions 6..8.
    std::vector<SeqId> seqs{b, a};
    std::vector<int32_t> tseq{0, 1, 1, 1}, tpos{1, 6, 7, 8};
    for (int round = 0; round < 3; ++round) {  // the ring alternates buffers
      KvBatchView v = batch.upload(cache.blocks(), seqs, tseq, tpos);
      EXPECT_EQ(v.n_seqs, 2);
      EXPECT_EQ(v.n_tokens, 4);
      EXPECT_EQ(v.max_context, 9);
      EXPECT_EQ(v.block_table_stride, 3u);
      std::vector<int32_t> meta(v.token_slot_offset + 4);
      d->read(v.meta, 0, meta.data(), meta.size() * 4);
      auto ta = cache.blocks().block_table(a);
      EXPECT_EQ(meta[0], cache.blocks().block_table(b)[0]);
      EXPECT_EQ(meta[1], -1);
      EXPECT_EQ(meta[3 + 2], ta[2]);
      EXPECT_EQ(meta[v.token_seq_offset + 2], 1);
      EXPECT_EQ(meta[v.token_pos_offset + 3], 8);
      EXPECT_EQ(meta[v.token_slot_offset + 0], rb.slots[1]);
      EXPECT_EQ(meta[v.token_slot_offset + 3], cache.blocks().slot(a, 8));
      EXPECT_EQ(batch.host_slots()[1], cache.blocks().slot(a, 6));
    }
    std::vector<int32_t> bad_pos{1, 6, 7, 9};
    EXPECT_THROW(batch.upload(cache.blocks(), seqs, tseq, bad_pos), KvCacheUsageError);
    std::vector<int32_t> bad_seq{0, 1, 2, 1};
    EXPECT_THROW(batch.upload(cache.blocks(), seqs, bad_seq, tpos), KvCacheUsageError);
    std::vector<SeqId> gone{b, a + 100};
    EXPECT_THROW(batch.upload(cache.blocks(), gone, tseq, tpos), KvCacheUsageError);
  }
}

}  // namespace
}  // namespace tessera::kv
