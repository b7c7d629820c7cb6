#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "core/ngram.hpp"

namespace stoker {
namespace {

using Tokens = std::vector<TokenId>;

TEST(NgramPropose, CopiesWhatFollowedTheLatestLongestMatch) {
  EXPECT_EQ(ngram_propose(Tokens{5, 6, 7, 8, 9, 5, 6}, 2, 1, 3), (Tokens{7, 8, 9}));
  EXPECT_EQ(ngram_propose(Tokens{1, 2, 3, 1, 9, 2, 3}, 2, 1, 3), (Tokens{1, 9, 2}));
  EXPECT_EQ(ngram_propose(Tokens{3, 5, 3, 6, 3}, 2, 1, 3), (Tokens{6, 3}));
  EXPECT_EQ(ngram_propose(Tokens{4, 1, 2, 3, 4}, 3, 2, 3), Tokens{});  // no 2- or 3-gram
  EXPECT_EQ(ngram_propose(Tokens{1, 2, 3}, 3, 1, 4), Tokens{});
  EXPECT_EQ(ngram_propose(Tokens{7}, 3, 1, 4), Tokens{});
  EXPECT_EQ(ngram_propose(Tokens{}, 3, 1, 4), Tokens{});
  EXPECT_EQ(ngram_propose(Tokens{2, 2}, 3, 1, 4), Tokens{2});
}

TEST(NgramPropose, RejectsBadSettings) {
  EXPECT_THROW(ngram_propose(Tokens{1, 1}, 0, 0, 1), std::invalid_argument);
  EXPECT_THROW(ngram_propose(Tokens{1, 1}, 1, 2, 1), std::invalid_argument);
  EXPECT_THROW(ngram_propose(Tokens{1, 1}, 2, 1, 0), std::invalid_argument);
}

}  // namespace
}  // namespace stoker
