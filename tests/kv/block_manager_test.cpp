// KvBlockManager: allocation, slots, exhaustion, freeing and reuse, prefix sharing, copy-on-write,
// and a randomized run checked against a simple model of what every sequence must hold.
#include "host/kv/block_manager.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

namespace tessera::kv {
namespace {

TEST(KvBlockManager, RejectsBadConfig) {
  EXPECT_THROW(KvBlockManager(0, 16), KvCacheUsageError);
  EXPECT_THROW(KvBlockManager(4, 0), KvCacheUsageError);
}

TEST(KvBlockManager, SlotsFollowBlocks) {
  KvBlockManager m(8, 4);
  SeqId s = m.create_sequence();
  EXPECT_EQ(m.length(s), 0);
  EXPECT_EQ(m.blocks_needed(s, 5), 2);
  KvReservation r = m.reserve(s, 5);
  EXPECT_EQ(r.first_pos, 0);
  EXPECT_TRUE(r.copies.empty());
  ASSERT_EQ(r.slots.size(), 5u);
  auto table = m.block_table(s);
  ASSERT_EQ(table.size(), 2u);
  for (int p = 0; p < 5; ++p) {
    EXPECT_EQ(r.slots[size_t(p)], table[size_t(p / 4)] * 4 + p % 4);
    EXPECT_EQ(m.slot(s, p), r.slots[size_t(p)]);
  }
  EXPECT_EQ(m.blocks_used(), 2);
  // Appending into the partially filled last block takes no new block until it is full.
  EXPECT_EQ(m.blocks_needed(s, 3), 0);
  KvReservation r2 = m.reserve(s, 3);
  EXPECT_EQ(r2.first_pos, 5);
  EXPECT_EQ(m.blocks_used(), 2);
  EXPECT_EQ(r2.slots[0], table[1] * 4 + 1);
  EXPECT_EQ(m.length(s), 8);
  EXPECT_EQ(m.reserve(s, 0).slots.size(), 0u);
  EXPECT_THROW(m.slot(s, 8), KvCacheUsageError);
  EXPECT_THROW(m.reserve(s, -1), KvCacheUsageError);
}

TEST(KvBlockManager, ExhaustionIsAnErrorAndChangesNothing) {
  KvBlockManager m(3, 4);
  SeqId a = m.create_sequence();
  SeqId b = m.create_sequence();
  m.reserve(a, 9);  // 3 blocks
  EXPECT_EQ(m.blocks_free(), 0);
  EXPECT_FALSE(m.try_reserve(b, 1).has_value());
  EXPECT_EQ(m.length(b), 0);
  EXPECT_TRUE(m.block_table(b).empty());
  try {
    m.reserve(b, 1);
    FAIL() << "expected KvCacheFullError";
  } catch (const KvCacheFullError& e) {
    EXPECT_NE(std::string(e.what()).find("0 of 3 blocks are free"), std::string::npos) << e.what();
  }
  // a can still fill its last block (3 free slots) but not one more.
  EXPECT_TRUE(m.try_reserve(a, 3).has_value());
  EXPECT_FALSE(m.try_reserve(a, 1).has_value());
  EXPECT_EQ(m.length(a), 12);
}

TEST(KvBlockManager, FreeReturnsBlocksForReuse) {
  KvBlockManager m(4, 2);
  SeqId a = m.create_sequence();
  m.reserve(a, 8);
  std::vector<int32_t> blocks_a(m.block_table(a).begin(), m.block_table(a).end());
  m.free_sequence(a);
  EXPECT_EQ(m.blocks_free(), 4);
  EXPECT_FALSE(m.contains(a));
  EXPECT_THROW(m.free_sequence(a), KvCacheUsageError);
  EXPECT_THROW(m.reserve(a, 1), KvCacheUsageError);
  SeqId b = m.create_sequence();
  EXPECT_NE(a, b);  // ids are never reused
  m.reserve(b, 8);
  std::set<int32_t> got(m.block_table(b).begin(), m.block_table(b).end());
  EXPECT_EQ(got, std::set<int32_t>(blocks_a.begin(), blocks_a.end()));
  for (int32_t blk : got) EXPECT_EQ(m.block_refs(blk), 1);
}

TEST(KvBlockManager, ForkSharesPrefixAndCopiesOnWrite) {
  KvBlockManager m(16, 4);
  SeqId p = m.create_sequence();
  m.reserve(p, 6);  // one full block + a half-filled one
  const std::vector<int32_t> pt(m.block_table(p).begin(), m.block_table(p).end());
  SeqId c = m.fork_sequence(p);
  EXPECT_EQ(m.length(c), 6);
  EXPECT_EQ(m.blocks_used(), 2);  // nothing allocated by the fork
  EXPECT_EQ(m.block_refs(pt[0]), 2);
  EXPECT_EQ(m.block_refs(pt[1]), 2);

  // The child appends first: it gets a private copy of the shared partial block.
  EXPECT_EQ(m.blocks_needed(c, 1), 1);
  KvReservation rc = m.reserve(c, 1);
  ASSERT_EQ(rc.copies.size(), 1u);
  EXPECT_EQ(rc.copies[0].src, pt[1]);
  const int32_t fresh = rc.copies[0].dst;
  EXPECT_NE(fresh, pt[1]);
  EXPECT_EQ(m.block_table(c)[0], pt[0]);  // full prefix block still shared
  EXPECT_EQ(m.block_table(c)[1], fresh);
  EXPECT_EQ(rc.slots[0], fresh * 4 + 2);
  EXPECT_EQ(m.block_refs(pt[1]), 1);
  EXPECT_EQ(m.block_refs(pt[0]), 2);

  // The parent now owns its partial block alone: it appends in place, no copy.
  KvReservation rp = m.reserve(p, 3);
  EXPECT_TRUE(rp.copies.empty());
  EXPECT_EQ(rp.slots[0], pt[1] * 4 + 2);
  EXPECT_EQ(rp.slots[1], pt[1] * 4 + 3);
  EXPECT_EQ(m.block_table(p).size(), 3u);

  // Freeing the parent keeps the shared prefix block alive for the child.
  m.free_sequence(p);
  EXPECT_EQ(m.block_refs(pt[0]), 1);
  EXPECT_EQ(m.block_refs(pt[1]), 0);
  m.free_sequence(c);
  EXPECT_EQ(m.blocks_free(), 16);
}

TEST(KvBlockManager, ForkOfFullBlocksNeedsNoCopy) {
  KvBlockManager m(8, 4);
  SeqId p = m.create_sequence();
  m.reserve(p, 8);
  SeqId c = m.fork_sequence(p);
  KvReservation r = m.reserve(c, 1);
  EXPECT_TRUE(r.copies.empty());
  EXPECT_EQ(m.blocks_used(), 3);
}

TEST(KvBlockManager, CopyOnWriteNeedsAFreeBlock) {
  KvBlockManager m(2, 4);
  SeqId p = m.create_sequence();
  m.reserve(p, 6);
  SeqId c = m.fork_sequence(p);
  EXPECT_EQ(m.blocks_free(), 0);
  EXPECT_FALSE(m.try_reserve(c, 1).has_value());
  EXPECT_EQ(m.block_refs(m.block_table(c)[1]), 2);  // unchanged
  m.free_sequence(p);
  EXPECT_TRUE(m.try_reserve(c, 1).has_value());  // sole owner now: appends in place
}

// Random create/fork/reserve/free against a model of each sequence's token -> (owner token id)
// contents: every position must map to a slot whose content (tracked per slot) is the token that
// sequence wrote there, shared slots are never overwritten, and the accounting adds up.
TEST(KvBlockManager, RandomizedAgainstModel) {
  constexpr int kBlocks = 24, kBs = 4;
  KvBlockManager m(kBlocks, kBs);
  std::mt19937 rng(7);
  std::map<SeqId, std::vector<int64_t>> expect;  // per sequence: content id of each position
  std::vector<int64_t> slot_content(kBlocks * kBs, -1);
  int64_t next_content = 0;
  for (int step = 0; step < 3000; ++step) {
    const int op = int(rng() % 10);
    if (op == 0 || expect.empty()) {
      expect[m.create_sequence()] = {};
    } else {
      auto it = expect.begin();
      std::advance(it, rng() % expect.size());
      const SeqId s = it->first;
      if (op == 1) {
        SeqId c = m.fork_sequence(s);
        expect[c] = it->second;
      } else if (op == 2) {
        m.free_sequence(s);
        expect.erase(it);
      } else {
        const int32_t n = int32_t(rng() % 7);
        auto r = m.try_reserve(s, n);
        if (!r) {
          EXPECT_GT(m.blocks_needed(s, n), m.blocks_free());
          continue;
        }
        for (const KvBlockCopy& c : r->copies)
          for (int i = 0; i < kBs; ++i)
            slot_content[size_t(c.dst) * kBs + size_t(i)] =
                slot_content[size_t(c.src) * kBs + size_t(i)];
        for (int32_t slot : r->slots) {
          // A slot we write must belong to this sequence alone.
          EXPECT_EQ(m.block_refs(slot / kBs), 1);
          slot_content[size_t(slot)] = next_content;
          it->second.push_back(next_content++);
        }
      }
    }
    // Check every live sequence reads back its own contents and refcounts match the tables.
    std::vector<int32_t> refs(kBlocks, 0);
    for (auto& [s, content] : expect) {
      ASSERT_EQ(m.length(s), int32_t(content.size()));
      for (int32_t b : m.block_table(s)) ++refs[size_t(b)];
      for (size_t p = 0; p < content.size(); ++p)
        ASSERT_EQ(slot_content[size_t(m.slot(s, int32_t(p)))], content[p])
            << "seq " << s << " pos " << p;
    }
    int32_t used = 0;
    for (int b = 0; b < kBlocks; ++b) {
      ASSERT_EQ(m.block_refs(b), refs[size_t(b)]);
      used += refs[size_t(b)] > 0;
    }
    ASSERT_EQ(m.blocks_used(), used);
  }
}

}  // namespace
}  // namespace tessera::kv
