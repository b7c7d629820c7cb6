// Paged KV-cache block manager for generative serving: sequences own tables of fixed-size blocks
// from a shared pool, forks share blocks until one side writes (copy-on-write), and full blocks are
// kept by a chained hash of their tokens so a later prompt with the same prefix reuses their KV.
//
// Policies (tests/_kv_reference.py implements the same ones; the two are tested against each
// other, so a change here needs the same change there):
// - A fresh block is the lowest-numbered free uncached block; only when there is none is the
//   least recently freed cached block evicted (and forgotten by the prefix cache).
// - A full block is cached as soon as its tokens are known (the model runner fills its KV in the
//   same step, before anyone can read it), unless its hash is already taken or its predecessor in
//   the table is not cached: a lookup only ever reaches a block through its cached predecessor.
// - free() releases a table back to front, so the tail of a sequence, the part least likely to be
//   shared, is evicted before its prefix.
// - Tentative tokens (speculative drafts) take slots like any other but fill no cache entry: their
//   blocks are cached only once settle() keeps them. settle() drops the rest, and the blocks that
//   only the dropped tokens used go back to the pool. A tentative token can also stand for one not
//   known yet (the scheduler's next step, scheduled before the last one's token is sampled):
//   confirm() then gives it its value and settles it.
// The manager is not thread-safe: its owner (one scheduler) serializes calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <set>
#include <span>
#include <unordered_map>
#include <vector>

namespace stoker {

using BlockId = int32_t;
using TokenId = int32_t;
using SeqId = int64_t;

// The chained hash of a full block: of the previous block's hash and this block's tokens.
using BlockHashFn = std::function<uint64_t(uint64_t previous, std::span<const TokenId> tokens)>;

// stoker's block hash: a splitmix64 finalizer folded over the tokens. 64 bits make collisions
// unlikely but not impossible, so a hit is confirmed against the stored tokens and predecessor.
uint64_t kv_block_hash(uint64_t previous, std::span<const TokenId> tokens);
// The `previous` hash of a sequence's first block.
inline constexpr uint64_t kKvHashSeed = 0x6a09e667f3bcc908ULL;

struct BlockCopy {
  BlockId src = 0;
  BlockId dst = 0;
  bool operator==(const BlockCopy&) const = default;
};

struct AppendResult {
  bool appended = false;  // false: out of blocks, and nothing changed
  // Set when the sequence's last block was shared: the runner copies src's KV into dst first.
  std::optional<BlockCopy> copy;
};

class KVBlockManager {
 public:
  // Throws std::invalid_argument unless both sizes are positive (and the pool fits BlockId).
  KVBlockManager(int64_t num_blocks, int64_t block_size, BlockHashFn hash = kv_block_hash);

  // Whether allocate() of any n_tokens-long prompt succeeds now (prefix hits only need fewer).
  bool can_allocate(int64_t n_tokens) const;
  // Gives a new sequence blocks for its prompt, reusing cached leading full blocks. Returns the
  // number of prompt tokens whose KV is already cached, or nullopt when out of blocks (then
  // nothing changed). Throws std::invalid_argument for a known seq or a negative token id.
  std::optional<int64_t> allocate(SeqId seq, std::span<const TokenId> tokens);
  bool can_append(SeqId seq) const;
  // Whether append_slot() takes a block from the pool (a new one, or a private copy).
  bool append_needs_block(SeqId seq) const { return needs_block(find(seq)); }
  // Makes room for one decoded token and records it. A tentative token waits for settle();
  // std::logic_error for a settled token appended after unsettled tentative ones.
  AppendResult append_slot(SeqId seq, TokenId token, bool tentative = false);
  // Keeps the first n tokens, which must include every settled one (std::invalid_argument
  // otherwise), releases the blocks past them and caches the full blocks they complete.
  void settle(SeqId seq, int64_t n);
  // The first tentative token becomes `token` and is kept, any after it dropped (settle()).
  // std::logic_error when the sequence has none, std::invalid_argument for a negative token.
  void confirm(SeqId seq, TokenId token);
  // The child shares every block of the parent, the partly filled last one included.
  void fork(SeqId parent, SeqId child);
  void free(SeqId seq);

  const std::vector<BlockId>& block_table(SeqId seq) const;
  int64_t num_tokens(SeqId seq) const;
  bool contains(SeqId seq) const { return seqs_.count(seq) != 0; }
  // The flat KV slot (block * block_size + offset) of each position; throws std::out_of_range for
  // a position outside the sequence.
  std::vector<int64_t> slot_mapping(SeqId seq, std::span<const int64_t> positions) const;

  int64_t num_blocks() const { return int64_t(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  // Blocks nobody holds, cached ones included (those are reused only after eviction).
  int64_t num_free_blocks() const { return int64_t(free_.size() + lru_.size()); }
  // Blocks the prefix cache can find, held or not.
  int64_t num_cached_blocks() const { return int64_t(index_.size()); }
  // Full prompt blocks found in / missing from the prefix cache by successful allocate() calls.
  int64_t prefix_hits() const { return hits_; }
  int64_t prefix_misses() const { return misses_; }

 private:
  static constexpr BlockId kNoBlock = -1;

  struct Block {
    int32_t refs = 0;
    bool cached = false;
    uint64_t hash = 0;
    // What a hit must match besides the hash; a cached block's predecessor stays cached at least
    // as long as it (released after it, so evicted after it).
    BlockId previous = kNoBlock;
    std::vector<TokenId> tokens;
    std::list<BlockId>::iterator lru_pos;  // valid while cached with no holder
  };
  struct Sequence {
    std::vector<BlockId> table;
    std::vector<TokenId> tokens;
    uint64_t last_hash = kKvHashSeed;  // of the last full block of settled tokens
    size_t tentative = 0;              // unsettled tokens at the end of `tokens`
  };

  const Sequence& find(SeqId seq) const;
  Sequence& find(SeqId seq);
  bool needs_block(const Sequence& s) const;
  BlockId take_fresh();
  void release(BlockId b);
  void cache(BlockId b, uint64_t hash, BlockId previous, std::span<const TokenId> tokens);
  std::optional<BlockId> lookup(uint64_t hash, BlockId previous,
                                std::span<const TokenId> tokens) const;

  int64_t block_size_;
  BlockHashFn hash_;
  std::vector<Block> blocks_;
  std::set<BlockId> free_;  // no holder, not cached
  std::list<BlockId> lru_;  // no holder, cached; least recently freed first
  std::unordered_map<uint64_t, BlockId> index_;
  std::unordered_map<SeqId, Sequence> seqs_;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

}  // namespace stoker
