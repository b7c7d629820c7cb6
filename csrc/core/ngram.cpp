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
  if (len < 2) return {};
  const size_t longest = std::min(size_t(max_ngram), len - 1);
  if (longest < size_t(min_ngram)) return {};
  // One backward pass over the places an earlier match may end (before the last token): the
  // first place whose match reaches n tokens is the latest occurrence of the n-gram.
  std::vector<size_t> latest(longest + 1, len);  // by n: where that occurrence ends
  const TokenId last = tokens[len - 1];
  for (size_t end = len - 1; end-- > 0;) {
    if (tokens[end] != last) continue;
    size_t m = 1;
    while (m < longest && m <= end && tokens[end - m] == tokens[len - 1 - m]) ++m;
    for (size_t n = m; n >= 1 && latest[n] == len; --n) latest[n] = end;
    if (m == longest) break;  // the longest n-gram, at its latest place: nothing beats it
  }
  for (size_t n = longest; n >= size_t(min_ngram); --n) {
    if (latest[n] == len) continue;
    const size_t from = latest[n] + 1;
    const size_t to = std::min(len, from + size_t(num_tokens));
    return {tokens.begin() + ptrdiff_t(from), tokens.begin() + ptrdiff_t(to)};
  }
  return {};
}

}  // namespace stoker
