#include "core/ngram.hpp"

#include <algorithm>
#include <stdexcept>

namespace stoker {

std::vector<TokenId> ngram_propose(std::span<const TokenId> tokens, int max_ngram, int min_ngram,
                                   int num_tokens) {
  if (min_ngram < 1 || min_ngram > max_ngram) {
    throw std::invalid_argument("need 1 <= min_ngram <= max_ngram");
  }
  if (num_tokens < 1) throw std::invalid_argument("num_tokens must be at least 1");
  const size_t len = tokens.size();
  for (size_t n = std::min(size_t(max_ngram), len == 0 ? 0 : len - 1); n >= size_t(min_ngram);
       --n) {
    const std::span<const TokenId> tail = tokens.subspan(len - n);
    // The latest start whose match ends before the last token, so that something follows it.
    for (size_t start = len - n; start-- > 0;) {
      if (std::equal(tail.begin(), tail.end(), tokens.begin() + ptrdiff_t(start))) {
        const size_t from = start + n;
        const size_t to = std::min(len, from + size_t(num_tokens));
        return {tokens.begin() + ptrdiff_t(from), tokens.begin() + ptrdiff_t(to)};
      }
    }
  }
  return {};
}

}  // namespace stoker
