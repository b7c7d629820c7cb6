#include <gtest/gtest.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "core/kv_blocks.hpp"

namespace stoker {
namespace {

using Table = std::vector<BlockId>;
using Tokens = std::vector<TokenId>;

// tokens(start, n): n distinct token ids start, start+1, ...
Tokens tokens(TokenId start, int n) {
  Tokens t;
  for (int i = 0; i < n; ++i) t.push_back(start + i);
  return t;
}

Tokens concat(Tokens a, const Tokens& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(KVBlocks, RejectsBadConfiguration) {
  EXPECT_THROW(KVBlockManager(0, 16), std::invalid_argument);
  EXPECT_THROW(KVBlockManager(8, 0), std::invalid_argument);
  EXPECT_THROW(KVBlockManager(-1, 16), std::invalid_argument);
  EXPECT_THROW(KVBlockManager(int64_t(1) << 40, 16), std::invalid_argument);
  EXPECT_THROW(KVBlockManager(8, 4, BlockHashFn()), std::invalid_argument);
}

TEST(KVBlocks, AllocateTakesLowestFreeBlocksAndMapsSlots) {
  KVBlockManager m(8, 4);
  EXPECT_TRUE(m.can_allocate(32));
  EXPECT_FALSE(m.can_allocate(33));
  EXPECT_EQ(m.allocate(1, tokens(100, 6)), 0);
  EXPECT_EQ(m.block_table(1), (Table{0, 1}));
  EXPECT_EQ(m.num_tokens(1), 6);
  EXPECT_EQ(m.num_free_blocks(), 6);
  EXPECT_EQ(m.num_cached_blocks(), 1) << "only the full block is cached";
  EXPECT_EQ(m.slot_mapping(1, std::vector<int64_t>{0, 3, 4, 5}),
            (std::vector<int64_t>{0, 3, 4, 5}));
  EXPECT_EQ(m.allocate(2, Tokens{}), 0);
  EXPECT_TRUE(m.block_table(2).empty());
}

TEST(KVBlocks, BadInputThrowsAndChangesNothing) {
  KVBlockManager m(8, 4);
  EXPECT_THROW(m.can_allocate(-1), std::invalid_argument);
  EXPECT_THROW(m.allocate(1, Tokens{1, -2}), std::invalid_argument);
  EXPECT_FALSE(m.contains(1));
  ASSERT_TRUE(m.allocate(1, tokens(0, 3)));
  EXPECT_THROW(m.allocate(1, tokens(0, 3)), std::invalid_argument);
  EXPECT_THROW(m.append_slot(1, -1), std::invalid_argument);
  EXPECT_THROW(m.append_slot(9, 1), std::out_of_range);
  EXPECT_THROW(m.can_append(9), std::out_of_range);
  EXPECT_THROW(m.free(9), std::out_of_range);
  EXPECT_THROW(m.block_table(9), std::out_of_range);
  EXPECT_THROW(m.fork(9, 2), std::out_of_range);
  EXPECT_THROW(m.fork(1, 1), std::invalid_argument);
  EXPECT_THROW(m.slot_mapping(1, std::vector<int64_t>{3}), std::out_of_range);
  EXPECT_THROW(m.slot_mapping(1, std::vector<int64_t>{-1}), std::out_of_range);
  EXPECT_EQ(m.num_tokens(1), 3);
  EXPECT_EQ(m.num_free_blocks(), 7);
}

TEST(KVBlocks, AppendFillsTheLastBlockThenTakesANewOne) {
  KVBlockManager m(8, 4);
  ASSERT_TRUE(m.allocate(1, tokens(0, 3)));
  EXPECT_EQ(m.num_cached_blocks(), 0);
  AppendResult r = m.append_slot(1, 3);
  EXPECT_TRUE(r.appended);
  EXPECT_FALSE(r.copy);
  EXPECT_EQ(m.block_table(1), (Table{0}));
  EXPECT_EQ(m.num_cached_blocks(), 1) << "the block became full";
  r = m.append_slot(1, 4);
  EXPECT_TRUE(r.appended);
  EXPECT_EQ(m.block_table(1), (Table{0, 1}));
  EXPECT_EQ(m.slot_mapping(1, std::vector<int64_t>{4}), (std::vector<int64_t>{4}));
}

TEST(KVBlocks, ForkSharesAndTheWriterCopiesOnWrite) {
  KVBlockManager m(8, 4);
  ASSERT_TRUE(m.allocate(1, tokens(0, 6)));
  m.fork(1, 2);
  EXPECT_EQ(m.block_table(2), (Table{0, 1}));
  EXPECT_EQ(m.num_free_blocks(), 6);
  AppendResult r = m.append_slot(2, 50);
  ASSERT_TRUE(r.appended);
  ASSERT_TRUE(r.copy);
  EXPECT_EQ(*r.copy, (BlockCopy{1, 2}));
  EXPECT_EQ(m.block_table(2), (Table{0, 2}));
  EXPECT_EQ(m.block_table(1), (Table{0, 1}));
  r = m.append_slot(1, 60);
  EXPECT_FALSE(r.copy) << "block 1 is no longer shared";
  EXPECT_EQ(m.block_table(1), (Table{0, 1}));
  // A fork of the copy shares its partial block again; the shared full block 0 is never copied.
  m.free(1);
  m.fork(2, 3);
  r = m.append_slot(3, 51);
  ASSERT_TRUE(r.copy);
  EXPECT_EQ(*r.copy, (BlockCopy{2, 1}));
  r = m.append_slot(3, 52);
  ASSERT_TRUE(r.appended);
  EXPECT_FALSE(r.copy);
  EXPECT_EQ(m.block_table(3), (Table{0, 1, 3}));
  EXPECT_EQ(m.block_table(2), (Table{0, 2}));
}

TEST(KVBlocks, ForkOfAFullLastBlockAppendsWithoutCopy) {
  KVBlockManager m(8, 4);
  ASSERT_TRUE(m.allocate(1, tokens(0, 4)));
  m.fork(1, 2);
  AppendResult r = m.append_slot(2, 9);
  EXPECT_TRUE(r.appended);
  EXPECT_FALSE(r.copy);
  EXPECT_EQ(m.block_table(2), (Table{0, 1}));
}

TEST(KVBlocks, FreeKeepsFullBlocksCachedAndPrefixHitsReuseThem) {
  KVBlockManager m(8, 4);
  const Tokens prompt = tokens(0, 10);
  ASSERT_EQ(m.allocate(1, prompt), 0);
  EXPECT_EQ(m.prefix_misses(), 2);
  m.free(1);
  EXPECT_EQ(m.num_free_blocks(), 8);
  EXPECT_EQ(m.num_cached_blocks(), 2);
  EXPECT_EQ(m.allocate(2, prompt), 8);
  EXPECT_EQ(m.block_table(2), (Table{0, 1, 2})) << "the partial block was not cached";
  EXPECT_EQ(m.prefix_hits(), 2);
  EXPECT_EQ(m.num_free_blocks(), 5);
  // A hit on a held block shares it.
  EXPECT_EQ(m.allocate(3, tokens(0, 8)), 8);
  EXPECT_EQ(m.block_table(3), (Table{0, 1}));
  EXPECT_EQ(m.num_free_blocks(), 5);
}

TEST(KVBlocks, PartialPrefixHitStopsAtTheFirstDifferentBlock) {
  KVBlockManager m(16, 4);
  ASSERT_TRUE(m.allocate(1, tokens(0, 12)));
  m.free(1);
  // Block 1 differs, so block 2 (same tokens as before) must miss: its KV depends on block 1.
  Tokens p = concat(concat(tokens(0, 4), tokens(90, 4)), tokens(8, 4));
  EXPECT_EQ(m.allocate(2, p), 4);
  EXPECT_EQ(m.block_table(2), (Table{0, 3, 4}));
  EXPECT_EQ(m.prefix_hits(), 1);
  EXPECT_EQ(m.prefix_misses(), 5);
}

TEST(KVBlocks, EvictsFreeUncachedFirstThenLeastRecentlyFreed) {
  KVBlockManager m(4, 2);
  ASSERT_TRUE(m.allocate(1, tokens(0, 2)));   // block 0
  ASSERT_TRUE(m.allocate(2, tokens(10, 4)));  // blocks 1, 2
  m.free(2);                                  // LRU: 2, 1 (released back to front)
  m.free(1);                                  // LRU: 2, 1, 0
  ASSERT_EQ(m.num_cached_blocks(), 3);
  ASSERT_TRUE(m.allocate(3, tokens(50, 1)));
  EXPECT_EQ(m.block_table(3), (Table{3})) << "the uncached free block goes first";
  ASSERT_TRUE(m.allocate(4, tokens(60, 2)));
  EXPECT_EQ(m.block_table(4), (Table{2})) << "then the least recently freed";
  EXPECT_EQ(m.num_cached_blocks(), 3) << "block 2 was evicted, then cached again";
  EXPECT_EQ(m.allocate(5, tokens(0, 2)), 2) << "block 0 survived";
  EXPECT_EQ(m.block_table(5), (Table{0}));
  m.free(3);
  EXPECT_EQ(m.allocate(6, tokens(10, 4)), 2) << "the tail of the prefix was evicted";
  EXPECT_EQ(m.block_table(6), (Table{1, 3}));
}

TEST(KVBlocks, AHitRefreshesABlockInTheLru) {
  KVBlockManager m(3, 2);
  ASSERT_TRUE(m.allocate(1, tokens(0, 2)));
  ASSERT_TRUE(m.allocate(2, tokens(10, 2)));
  m.free(1);
  m.free(2);  // LRU: 0, 1
  ASSERT_EQ(m.allocate(3, tokens(0, 2)), 2);
  m.free(3);  // LRU: 1, 0
  ASSERT_TRUE(m.allocate(4, tokens(20, 6)));
  EXPECT_EQ(m.block_table(4), (Table{2, 1, 0}));
}

TEST(KVBlocks, ExhaustionIsReportedAndChangesNothing) {
  KVBlockManager m(2, 2);
  ASSERT_TRUE(m.allocate(1, tokens(0, 3)));
  EXPECT_FALSE(m.can_allocate(1));
  EXPECT_EQ(m.allocate(2, tokens(9, 1)), std::nullopt);
  EXPECT_FALSE(m.contains(2));
  EXPECT_TRUE(m.can_append(1)) << "room left in the last block";
  ASSERT_TRUE(m.append_slot(1, 3).appended);
  EXPECT_FALSE(m.can_append(1));
  AppendResult r = m.append_slot(1, 4);
  EXPECT_FALSE(r.appended);
  EXPECT_EQ(m.num_tokens(1), 4);
  m.fork(1, 2);
  m.free(1);
  ASSERT_TRUE(m.allocate(3, Tokens{}));
  EXPECT_EQ(m.prefix_misses(), 1) << "a failed allocate counts nothing";
}

TEST(KVBlocks, CopyOnWriteNeedsAFreeBlock) {
  KVBlockManager m(1, 4);
  ASSERT_TRUE(m.allocate(1, tokens(0, 2)));
  m.fork(1, 2);
  EXPECT_FALSE(m.can_append(1));
  EXPECT_FALSE(m.append_slot(1, 7).appended);
  m.free(2);
  EXPECT_TRUE(m.append_slot(1, 7).appended);
}

TEST(KVBlocks, AllocateCountsUnheldHitsAgainstTheFreePool) {
  KVBlockManager m(2, 2);
  ASSERT_TRUE(m.allocate(1, tokens(0, 2)));
  m.free(1);
  // Needs the cached block 0 as a hit plus two fresh blocks: only one is left besides it.
  EXPECT_EQ(m.allocate(2, tokens(0, 6)), std::nullopt);
  EXPECT_EQ(m.allocate(2, tokens(0, 4)), 2);
  EXPECT_EQ(m.block_table(2), (Table{0, 1}));
}

TEST(KVBlocks, DuplicateContentIsCachedOnce) {
  KVBlockManager m(8, 2);
  ASSERT_TRUE(m.allocate(1, tokens(0, 2)));
  ASSERT_TRUE(m.allocate(2, tokens(0, 1)));
  ASSERT_TRUE(m.append_slot(2, 1).appended);  // same content as block 0, already cached
  EXPECT_EQ(m.num_cached_blocks(), 1);
  ASSERT_TRUE(m.append_slot(2, 2).appended);
  ASSERT_TRUE(m.append_slot(2, 3).appended);
  EXPECT_EQ(m.num_cached_blocks(), 1) << "a successor of an uncached block is not cached";
  m.free(2);
  EXPECT_EQ(m.num_cached_blocks(), 1);
  EXPECT_EQ(m.allocate(3, tokens(0, 4)), 2);
}

TEST(KVBlocks, HashCollisionsNeverReturnAnotherPrefix) {
  // Every block hashes alike: only the stored tokens and predecessor tell them apart.
  KVBlockManager m(8, 2, [](uint64_t, std::span<const TokenId>) { return uint64_t(7); });
  ASSERT_TRUE(m.allocate(1, tokens(0, 2)));
  m.free(1);
  EXPECT_EQ(m.allocate(2, tokens(5, 2)), 0);
  EXPECT_NE(m.block_table(2), (Table{0}));
  EXPECT_EQ(m.num_cached_blocks(), 1) << "a colliding block is not cached";
  EXPECT_EQ(m.allocate(3, tokens(0, 2)), 2);
}

TEST(KVBlocks, ChainCollisionChecksThePredecessor) {
  // The hash ignores the chain, so equal blocks after different predecessors collide.
  KVBlockManager m(8, 2, [](uint64_t, std::span<const TokenId> t) { return uint64_t(t[0]); });
  ASSERT_EQ(m.allocate(1, Tokens{1, 1, 2, 2}), 0);
  ASSERT_EQ(m.allocate(2, Tokens{3, 3, 2, 2}), 0);
  EXPECT_EQ(m.num_cached_blocks(), 3) << "{2, 2} after {3, 3} collides with {2, 2} after {1, 1}";
  // {3, 3} hits; the cached {2, 2} follows another block, so its KV belongs to another prefix.
  EXPECT_EQ(m.allocate(3, Tokens{3, 3, 2, 2}), 2);
  EXPECT_EQ(m.block_table(3), (Table{2, 4}));
  EXPECT_EQ(m.allocate(4, Tokens{1, 1, 2, 2}), 4);
}

TEST(KVBlocks, HashChainsAndDependsOnEveryToken) {
  const Tokens a{1, 2, 3}, b{1, 2, 4};
  EXPECT_NE(kv_block_hash(kKvHashSeed, a), kv_block_hash(kKvHashSeed, b));
  EXPECT_NE(kv_block_hash(kKvHashSeed, a), kv_block_hash(kKvHashSeed + 1, a));
  EXPECT_EQ(kv_block_hash(5, a), kv_block_hash(5, Tokens{1, 2, 3}));
}

TEST(KVBlockManager, SettleKeepsAPrefixOfTheDraftsAndCachesOnlyKeptBlocks) {
  KVBlockManager m(6, 2);
  ASSERT_EQ(m.allocate(1, std::vector<TokenId>{5}), 0);
  EXPECT_TRUE(m.append_slot(1, 6, true).appended);
  EXPECT_TRUE(m.append_slot(1, 7, true).appended);
  EXPECT_EQ(m.num_cached_blocks(), 0);
  EXPECT_THROW(m.append_slot(1, 8), std::logic_error);
  EXPECT_THROW(m.settle(1, 0), std::invalid_argument);
  EXPECT_THROW(m.settle(1, 4), std::invalid_argument);
  m.settle(1, 2);
  EXPECT_EQ(m.num_tokens(1), 2);
  EXPECT_EQ(m.block_table(1).size(), 1u);
  EXPECT_EQ(m.num_cached_blocks(), 1);
  EXPECT_EQ(m.num_free_blocks(), 5);
  EXPECT_EQ(m.allocate(2, std::vector<TokenId>{5, 6, 1}), 2);
}

}  // namespace
}  // namespace stoker
