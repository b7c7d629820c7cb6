// Prompt lookup for speculative decoding: draft tokens copied from what followed an earlier
// occurrence of a sequence's final n-gram. No model, a few microseconds per sequence.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/kv_blocks.hpp"

namespace stoker {

// Up to num_tokens tokens that followed the latest earlier occurrence of the last n tokens,
// trying n from max_ngram down to min_ngram; empty when none occurs. Throws
// std::invalid_argument unless 1 <= min_ngram <= max_ngram and num_tokens >= 1.
std::vector<TokenId> ngram_propose(std::span<const TokenId> tokens, int max_ngram, int min_ngram,
                                   int num_tokens);

}  // namespace stoker
