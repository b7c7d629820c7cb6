#include "core/kv_blocks.hpp"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace stoker {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

void check_tokens(std::span<const TokenId> tokens) {
  for (TokenId t : tokens) {
    if (t < 0) throw std::invalid_argument("token ids must not be negative");
  }
}

}  // namespace

uint64_t kv_block_hash(uint64_t previous, std::span<const TokenId> tokens) {
  uint64_t h = splitmix64(previous);
  for (TokenId t : tokens) h = splitmix64(h ^ uint64_t(uint32_t(t)));
  return h;
}

KVBlockManager::KVBlockManager(int64_t num_blocks, int64_t block_size, BlockHashFn hash)
    : block_size_(block_size), hash_(std::move(hash)) {
  if (num_blocks <= 0) throw std::invalid_argument("num_blocks must be positive");
  if (block_size <= 0) throw std::invalid_argument("block_size must be positive");
  // Slots (block * block_size + offset) are int64 for the model runner.
  if (num_blocks > std::numeric_limits<BlockId>::max() ||
      block_size > std::numeric_limits<int64_t>::max() / num_blocks) {
    throw std::invalid_argument("num_blocks * block_size is too large");
  }
  if (!hash_) throw std::invalid_argument("the block hash function is empty");
  blocks_.resize(size_t(num_blocks));
  for (BlockId b = 0; b < BlockId(num_blocks); ++b) free_.insert(free_.end(), b);
}

const KVBlockManager::Sequence& KVBlockManager::find(SeqId seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw std::out_of_range("unknown sequence " + std::to_string(seq));
  return it->second;
}

KVBlockManager::Sequence& KVBlockManager::find(SeqId seq) {
  return const_cast<Sequence&>(std::as_const(*this).find(seq));
}

bool KVBlockManager::can_allocate(int64_t n_tokens) const {
  if (n_tokens < 0) throw std::invalid_argument("n_tokens must not be negative");
  return (n_tokens + block_size_ - 1) / block_size_ <= num_free_blocks();
}

std::optional<BlockId> KVBlockManager::lookup(uint64_t hash, BlockId previous,
                                              std::span<const TokenId> tokens) const {
  auto it = index_.find(hash);
  if (it == index_.end()) return std::nullopt;
  const Block& b = blocks_[size_t(it->second)];
  // A hash collision must never hand out another prefix's KV.
  if (b.previous != previous ||
      !std::equal(tokens.begin(), tokens.end(), b.tokens.begin(), b.tokens.end())) {
    return std::nullopt;
  }
  return it->second;
}

void KVBlockManager::cache(BlockId b, uint64_t hash, BlockId previous,
                           std::span<const TokenId> tokens) {
  if (previous != kNoBlock && !blocks_[size_t(previous)].cached) return;
  if (!index_.emplace(hash, b).second) return;
  Block& block = blocks_[size_t(b)];
  block.cached = true;
  block.hash = hash;
  block.previous = previous;
  block.tokens.assign(tokens.begin(), tokens.end());
}

BlockId KVBlockManager::take_fresh() {
  BlockId b;
  if (!free_.empty()) {
    b = *free_.begin();
    free_.erase(free_.begin());
  } else {
    b = lru_.front();
    lru_.pop_front();
    Block& evicted = blocks_[size_t(b)];
    index_.erase(evicted.hash);
    evicted.cached = false;
    evicted.tokens.clear();
  }
  blocks_[size_t(b)].refs = 1;
  return b;
}

void KVBlockManager::release(BlockId b) {
  Block& block = blocks_[size_t(b)];
  if (--block.refs > 0) return;
  if (block.cached) {
    block.lru_pos = lru_.insert(lru_.end(), b);
  } else {
    free_.insert(b);
  }
}

std::optional<int64_t> KVBlockManager::allocate(SeqId seq, std::span<const TokenId> tokens) {
  if (seqs_.count(seq) != 0) {
    throw std::invalid_argument("sequence " + std::to_string(seq) + " already exists");
  }
  check_tokens(tokens);
  const size_t bs = size_t(block_size_);
  const size_t n_full = tokens.size() / bs;
  const size_t n_blocks = (tokens.size() + bs - 1) / bs;
  std::vector<uint64_t> hashes(n_full);
  uint64_t h = kKvHashSeed;
  for (size_t i = 0; i < n_full; ++i) hashes[i] = h = hash_(h, tokens.subspan(i * bs, bs));

  std::vector<BlockId> hits;
  size_t hits_unheld = 0;
  for (size_t i = 0; i < n_full; ++i) {
    auto b = lookup(hashes[i], i == 0 ? kNoBlock : hits.back(), tokens.subspan(i * bs, bs));
    if (!b) break;
    hits.push_back(*b);
    if (blocks_[size_t(*b)].refs == 0) ++hits_unheld;
  }
  // Unheld hits leave the pool of free blocks that fresh blocks are taken from.
  if (n_blocks - hits.size() + hits_unheld > size_t(num_free_blocks())) return std::nullopt;

  Sequence s;
  s.table.reserve(n_blocks);
  for (BlockId b : hits) {
    Block& block = blocks_[size_t(b)];
    if (block.refs++ == 0) lru_.erase(block.lru_pos);
    s.table.push_back(b);
  }
  for (size_t i = hits.size(); i < n_blocks; ++i) {
    const BlockId b = take_fresh();
    if (i < n_full)
      cache(b, hashes[i], i == 0 ? kNoBlock : s.table.back(), tokens.subspan(i * bs, bs));
    s.table.push_back(b);
  }
  s.tokens.assign(tokens.begin(), tokens.end());
  if (n_full > 0) s.last_hash = hashes[n_full - 1];
  seqs_.emplace(seq, std::move(s));
  hits_ += int64_t(hits.size());
  misses_ += int64_t(n_full - hits.size());
  return int64_t(hits.size() * bs);
}

bool KVBlockManager::needs_block(const Sequence& s) const {
  // A full (or missing) last block needs a successor; a shared partial one needs a private copy.
  return s.tokens.size() % size_t(block_size_) == 0 || blocks_[size_t(s.table.back())].refs > 1;
}

bool KVBlockManager::can_append(SeqId seq) const {
  return !needs_block(find(seq)) || num_free_blocks() > 0;
}

AppendResult KVBlockManager::append_slot(SeqId seq, TokenId token, bool tentative) {
  Sequence& s = find(seq);
  check_tokens(std::span<const TokenId>(&token, 1));
  if (!tentative && s.tentative > 0) {
    throw std::logic_error("settle() the tentative tokens of sequence " + std::to_string(seq) +
                           " before appending more");
  }
  AppendResult result;
  if (needs_block(s)) {
    if (num_free_blocks() == 0) return result;
    const BlockId b = take_fresh();
    if (s.tokens.size() % size_t(block_size_) == 0) {
      s.table.push_back(b);
    } else {
      result.copy = BlockCopy{s.table.back(), b};
      release(s.table.back());
      s.table.back() = b;
    }
  }
  s.tokens.push_back(token);
  result.appended = true;
  if (tentative) {
    ++s.tentative;
    return result;
  }
  const size_t bs = size_t(block_size_);
  if (s.tokens.size() % bs == 0) {
    const std::span<const TokenId> last(s.tokens.data() + s.tokens.size() - bs, bs);
    s.last_hash = hash_(s.last_hash, last);
    const size_t n = s.table.size();
    cache(s.table.back(), s.last_hash, n == 1 ? kNoBlock : s.table[n - 2], last);
  }
  return result;
}

void KVBlockManager::settle(SeqId seq, int64_t n) {
  Sequence& s = find(seq);
  const size_t settled = s.tokens.size() - s.tentative;
  if (n < int64_t(settled) || n > int64_t(s.tokens.size())) {
    throw std::invalid_argument("settle() keeps " + std::to_string(settled) + " to " +
                                std::to_string(s.tokens.size()) + " tokens of sequence " +
                                std::to_string(seq) + ", not " + std::to_string(n));
  }
  const size_t bs = size_t(block_size_);
  const size_t keep = (size_t(n) + bs - 1) / bs;
  while (s.table.size() > keep) {
    release(s.table.back());
    s.table.pop_back();
  }
  s.tokens.resize(size_t(n));
  s.tentative = 0;
  for (size_t i = settled / bs; i < size_t(n) / bs; ++i) {
    const std::span<const TokenId> block(s.tokens.data() + i * bs, bs);
    s.last_hash = hash_(s.last_hash, block);
    cache(s.table[i], s.last_hash, i == 0 ? kNoBlock : s.table[i - 1], block);
  }
}

void KVBlockManager::confirm(SeqId seq, TokenId token) {
  Sequence& s = find(seq);
  check_tokens(std::span<const TokenId>(&token, 1));
  if (s.tentative == 0) {
    throw std::logic_error("sequence " + std::to_string(seq) + " has no tentative token");
  }
  const size_t settled = s.tokens.size() - s.tentative;
  s.tokens[settled] = token;
  settle(seq, int64_t(settled) + 1);
}

void KVBlockManager::fork(SeqId parent, SeqId child) {
  const Sequence& p = find(parent);
  if (seqs_.count(child) != 0) {
    throw std::invalid_argument("sequence " + std::to_string(child) + " already exists");
  }
  for (BlockId b : p.table) ++blocks_[size_t(b)].refs;
  Sequence copy = p;
  seqs_.emplace(child, std::move(copy));
}

void KVBlockManager::free(SeqId seq) {
  Sequence& s = find(seq);
  for (auto it = s.table.rbegin(); it != s.table.rend(); ++it) release(*it);
  seqs_.erase(seq);
}

const std::vector<BlockId>& KVBlockManager::block_table(SeqId seq) const { return find(seq).table; }

int64_t KVBlockManager::num_tokens(SeqId seq) const { return int64_t(find(seq).tokens.size()); }

std::vector<int64_t> KVBlockManager::slot_mapping(SeqId seq,
                                                  std::span<const int64_t> positions) const {
  const Sequence& s = find(seq);
  std::vector<int64_t> slots;
  slots.reserve(positions.size());
  for (int64_t p : positions) {
    if (p < 0 || p >= int64_t(s.tokens.size())) {
      throw std::out_of_range("position " + std::to_string(p) + " is outside sequence " +
                              std::to_string(seq));
    }
    slots.push_back(int64_t(s.table[size_t(p / block_size_)]) * block_size_ + p % block_size_);
  }
  return slots;
}

}  // namespace stoker
