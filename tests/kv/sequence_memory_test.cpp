// Sequence memory: window groups releasing blocks that fell out of their window (bookkeeping and
// the cache's groups), per-layer KV layouts, the recurrent-state pool (zeroed at create, copied at
// fork, slots returned at free) and SequenceMemory routing every operation to both.
#include "host/kv/sequence_memory.h"

#include <gtest/gtest.h>

#include <numeric>

namespace tessera::kv {
namespace {

DeviceRegistry& registry() {
  static DeviceRegistry reg = DeviceRegistry::discover();
  return reg;
}

TEST(WindowBlocks, ReleasesBlocksBeforeTheWindowOfTheFirstNewToken) {
  KvBlockManager m(8, 4, /*window=*/6);
  const SeqId s = m.create_sequence();
  m.reserve(s, 8);  // positions 0..7: blocks 0, 1
  EXPECT_EQ(m.blocks_held(s), 2);
  // Next token at 8 attends to [3, 8]: block 0 (positions 0..3) is still read.
  m.reserve(s, 1);
  EXPECT_EQ(m.blocks_held(s), 3);
  EXPECT_GE(m.block_table(s)[0], 0);
  // Token at 9 attends to [4, 9]: block 0 is done and goes back to the pool.
  m.reserve(s, 1);
  EXPECT_EQ(m.block_table(s)[0], -1);
  EXPECT_EQ(m.blocks_held(s), 2);
  EXPECT_EQ(m.blocks_free(), 6);
  EXPECT_THROW(m.slot(s, 2), KvCacheUsageError);  // fell out of the window
  EXPECT_EQ(m.slot(s, 9), m.block_table(s)[2] * 4 + 1);
  EXPECT_EQ(m.length(s), 10);
  // A long sequence holds at most ceil(window / block) + 1 blocks.
  for (int i = 0; i < 30; ++i) m.reserve(s, 1);
  EXPECT_LE(m.blocks_held(s), 3);
  m.free_sequence(s);
  EXPECT_EQ(m.blocks_free(), 8);
}

TEST(WindowBlocks, ForkedSequencesKeepSharedBlocksUntilBothLeaveThem) {
  KvBlockManager m(8, 4, /*window=*/4);
  const SeqId a = m.create_sequence();
  m.reserve(a, 8);  // blocks 0, 1 (both full)
  const SeqId b = m.fork_sequence(a);
  const int32_t first = m.block_table(a)[0];
  EXPECT_EQ(m.block_refs(first), 2);
  m.reserve(a, 1);  // token 8 attends to [5, 8]: a drops block 0
  EXPECT_EQ(m.block_refs(first), 1);
  EXPECT_EQ(m.block_table(b)[0], first);  // b still reads it
  m.reserve(b, 1);
  EXPECT_EQ(m.block_refs(first), 0);  // now free
  m.free_sequence(a);
  m.free_sequence(b);
  EXPECT_EQ(m.blocks_free(), 8);
}

TEST(WindowGroups, LayersOfOneWindowShareTablesAndEveryGroupReserves) {
  const Device* d = registry().devices().front().get();
  KvCacheConfig c{3, 2, 8, 4, 4, KvFormat::kF16};
  c.layer_window = {0, 4, 0};
  c.layer_n_head_kv = {2, 1, 2};
  PagedKvCache cache(c, {d, d, d});
  ASSERT_EQ(cache.n_groups(), 2);
  EXPECT_EQ(cache.group_of(0), cache.group_of(2));
  EXPECT_NE(cache.group_of(0), cache.group_of(1));
  EXPECT_EQ(cache.blocks(cache.group_of(1)).window(), 4);
  // Per-layer layouts: layer 1 has one KV head, so half the block bytes.
  EXPECT_EQ(cache.layout(1, KvPart::kV).n_head_kv, 1);
  EXPECT_EQ(cache.layout(0).block_bytes(), 2 * cache.layout(1).block_bytes());
  EXPECT_EQ(kv_bytes_per_block(c), 2 * (2 + 1 + 2) * uint64_t(4 * 8 * 2));

  const SeqId s = cache.create_sequence();
  const int g_full = cache.group_of(0), g_win = cache.group_of(1);
  cache.reserve(s, 12);  // a 12-token chunk: its first token reads from 0, so no block is dropped
  EXPECT_EQ(cache.blocks(g_win).blocks_held(s), 3);
  cache.reserve(s, 4);  // the full-context group is now full
  EXPECT_EQ(cache.blocks(g_full).blocks_free(), 0);
  // The window group dropped the blocks before position 12 - 4 + 1 (= 9): blocks 0 and 1.
  EXPECT_EQ(cache.blocks(g_win).blocks_held(s), 2);
  EXPECT_EQ(cache.blocks(g_win).blocks_free(), 2);
  // One more token needs a block in the full group: nothing changes in either group.
  EXPECT_FALSE(cache.try_reserve(s, 1).has_value());
  EXPECT_EQ(cache.blocks(g_win).length(s), 16);
  EXPECT_THROW(cache.reserve(s, 1), KvCacheFullError);
  cache.free_sequence(s);
  EXPECT_EQ(cache.blocks(g_full).blocks_free(), 4);
  EXPECT_EQ(cache.blocks(g_win).blocks_free(), 4);
}

TEST(RecurrentStatePool, ZeroedAtCreateCopiedAtForkReturnedAtFree) {
  for (const auto& dev : registry().devices()) {
    SCOPED_TRACE(dev->id());
    const Device* d = dev.get();
    RecurrentStatePool pool({{64, 0, 32}, 2}, {d, d, d});
    EXPECT_EQ(pool.layer(1), nullptr);  // a layer without state has no buffer
    const SeqId a = 10;
    pool.create(a);
    std::vector<uint8_t> bytes(64, 0xAB);
    d->read(pool.layer(0), size_t(pool.slot(a)) * 64, bytes.data(), 64);
    for (uint8_t x : bytes) ASSERT_EQ(x, 0);
    std::iota(bytes.begin(), bytes.end(), uint8_t(1));
    d->write(pool.layer(0), size_t(pool.slot(a)) * 64, bytes.data(), 64);
    const SeqId b = 11;
    pool.fork(a, b);
    EXPECT_NE(pool.slot(a), pool.slot(b));
    std::vector<uint8_t> copy(64);
    d->read(pool.layer(0), size_t(pool.slot(b)) * 64, copy.data(), 64);
    EXPECT_EQ(copy, bytes);
    EXPECT_EQ(pool.slots_free(), 0);
    EXPECT_THROW(pool.create(12), KvCacheFullError);
    EXPECT_THROW(pool.create(a), KvCacheUsageError);  // already holds a slot
    pool.free(a);
    EXPECT_EQ(pool.slots_free(), 1);
    EXPECT_THROW(pool.slot(a), KvCacheUsageError);
    // A reused slot starts from zero again.
    pool.create(12);
    d->read(pool.layer(0), size_t(pool.slot(12)) * 64, copy.data(), 64);
    for (uint8_t x : copy) ASSERT_EQ(x, 0);
  }
}

TEST(SequenceMemory, RoutesEveryOperationToTheKvCacheAndTheStatePool) {
  const Device* d = registry().devices().front().get();
  KvCacheConfig c{2, 2, 8, 4, 8, KvFormat::kF16};
  SequenceMemory mem(std::make_unique<PagedKvCache>(c, std::vector<const Device*>{d, d}),
                     std::make_unique<RecurrentStatePool>(RecurrentStateConfig{{0, 16}, 2},
                                                          std::vector<const Device*>{d, d}));
  const SeqId a = mem.create();
  EXPECT_TRUE(mem.states()->contains(a));
  EXPECT_EQ(mem.reserve(a, 6).first_pos, 0);
  EXPECT_EQ(mem.length(a), 6);
  const SeqId b = mem.fork(a);
  EXPECT_EQ(mem.length(b), 6);
  EXPECT_TRUE(mem.states()->contains(b));
  EXPECT_EQ(mem.kv()->blocks().block_refs(mem.kv()->blocks().block_table(a)[0]), 2);
  // No recurrent slot left: create fails and changes nothing.
  const int32_t blocks_free = mem.kv()->blocks().blocks_free();
  EXPECT_THROW(mem.create(), KvCacheFullError);
  EXPECT_EQ(mem.kv()->blocks().n_sequences(), 2);
  EXPECT_EQ(mem.kv()->blocks().blocks_free(), blocks_free);
  const auto r = mem.try_reserve(b, 3);  // copy-on-write of the shared half block
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->copies.size(), 1u);
  mem.free(a);
  EXPECT_FALSE(mem.contains(a));
  EXPECT_FALSE(mem.states()->contains(a));
  EXPECT_THROW(mem.free(a), KvCacheUsageError);
  mem.free(b);
  EXPECT_EQ(mem.kv()->blocks().blocks_free(), 8);
  EXPECT_EQ(mem.states()->slots_free(), 2);
}

TEST(SequenceMemory, WithoutAKvCacheKeepsLengthsItself) {
  const Device* d = registry().devices().front().get();
  SequenceMemory mem(nullptr, std::make_unique<RecurrentStatePool>(RecurrentStateConfig{{8}, 4},
                                                                   std::vector<const Device*>{d}));
  const SeqId a = mem.create();
  EXPECT_EQ(mem.reserve(a, 5).first_pos, 0);
  EXPECT_EQ(mem.reserve(a, 2).first_pos, 5);
  const SeqId b = mem.fork(a);
  EXPECT_EQ(mem.length(b), 7);
  EXPECT_THROW(mem.reserve(a, -1), KvCacheUsageError);
  mem.free(a);
  EXPECT_THROW(mem.length(a), KvCacheUsageError);
  EXPECT_THROW(SequenceMemory(nullptr, nullptr), KvCacheUsageError);
}

}  // namespace
}  // namespace tessera::kv
