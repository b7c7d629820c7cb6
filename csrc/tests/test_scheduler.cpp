#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <map>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/scheduler.hpp"

namespace stoker {
namespace {

using Tokens = std::vector<TokenId>;
using Ints = std::vector<int64_t>;
using Rows = std::vector<ScheduledSeq>;
using Ids = std::vector<SeqId>;

Tokens tokens(TokenId start, int n) {
  Tokens t;
  for (int i = 0; i < n; ++i) t.push_back(start + i);
  return t;
}

SamplingParams up_to(int64_t n) { return SamplingParams{n, std::nullopt, {}}; }

TEST(Scheduler, RejectsBadInput) {
  EXPECT_THROW(Scheduler(8, 4, 2, 4), std::invalid_argument);
  EXPECT_THROW(Scheduler(8, 4, 8, 0), std::invalid_argument);
  EXPECT_THROW(Scheduler(0, 4, 8, 2), std::invalid_argument);
  Scheduler s(2, 4, 8, 2);
  EXPECT_THROW(s.add(1, {}, up_to(1)), std::invalid_argument);
  EXPECT_THROW(s.add(1, {1, -2}, up_to(1)), std::invalid_argument);
  EXPECT_THROW(s.add(1, {1}, up_to(0)), std::invalid_argument);
  EXPECT_THROW(s.add(1, tokens(0, 9), up_to(1)), std::invalid_argument);
  EXPECT_THROW(s.add(1, tokens(0, 6), up_to(4)), std::invalid_argument);
  s.add(1, tokens(0, 6), up_to(3));  // 8 tokens of KV: exactly the cache
  EXPECT_THROW(s.add(1, {1}, up_to(1)), std::invalid_argument);
  EXPECT_THROW(s.abort(7), std::out_of_range);
  EXPECT_THROW(s.update(Tokens{1}), std::invalid_argument);
  EXPECT_EQ(s.schedule().sample, Ids{1});
  EXPECT_EQ(s.schedule().pending, std::vector<int32_t>{0});  // one step ahead
  EXPECT_THROW(s.schedule(), std::logic_error);              // not two
  EXPECT_THROW(s.propose(1, {2}), std::logic_error);
  EXPECT_THROW(s.update(Tokens{}), std::invalid_argument);
  EXPECT_THROW(s.update(Tokens{-1}), std::invalid_argument);
  EXPECT_TRUE(s.update(Tokens{5}).empty());
}

TEST(Scheduler, ChunksPrefillUnderBudgetThenDecodesFirst) {
  Scheduler s(16, 4, 8, 4);
  s.add(1, tokens(100, 10), up_to(5));
  SchedulerStep a = s.schedule();
  EXPECT_EQ(a.input_ids, tokens(100, 8));
  EXPECT_EQ(a.positions, (Ints{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(a.seqs, (Rows{{1, 8, 8}}));
  EXPECT_EQ(a.block_tables, (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(a.slot_mapping, (Ints{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_TRUE(a.sample.empty());  // the prompt is not done yet

  s.add(2, tokens(200, 3), up_to(5));
  SchedulerStep b = s.schedule();
  EXPECT_EQ(b.input_ids, (Tokens{108, 109, 200, 201, 202}));
  EXPECT_EQ(b.positions, (Ints{8, 9, 0, 1, 2}));
  EXPECT_EQ(b.seqs, (Rows{{1, 2, 10}, {2, 3, 3}}));
  EXPECT_EQ(b.table_width, 3);
  EXPECT_EQ(b.block_tables, (std::vector<BlockId>{0, 1, 2, 3, -1, -1}));
  EXPECT_EQ(b.slot_mapping, (Ints{8, 9, 12, 13, 14}));
  EXPECT_EQ(b.sample, (Ids{1, 2}));
  EXPECT_TRUE(s.update(Tokens{7, 8}).empty());

  s.add(3, tokens(300, 20), up_to(1));
  SchedulerStep c = s.schedule();
  EXPECT_EQ(c.seqs, (Rows{{1, 1, 11}, {2, 1, 4}, {3, 6, 6}}));
  EXPECT_EQ(c.input_ids, (Tokens{7, 8, 300, 301, 302, 303, 304, 305}));
  EXPECT_EQ(c.positions, (Ints{10, 3, 0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(c.sample, (Ids{1, 2}));
}

TEST(Scheduler, AdmitsNoMoreThanMaxNumSeqs) {
  Scheduler s(16, 4, 16, 1);
  s.add(1, tokens(0, 2), up_to(2));
  s.add(2, tokens(10, 2), up_to(2));
  EXPECT_EQ(s.schedule().seqs, (Rows{{1, 2, 2}}));
  EXPECT_EQ(s.num_waiting(), 1);
  s.update(Tokens{5});
  EXPECT_EQ(s.schedule().seqs, (Rows{{1, 1, 3}}));
  ASSERT_EQ(s.update(Tokens{6}).size(), 1u);
  EXPECT_EQ(s.schedule().seqs, (Rows{{2, 2, 2}}));
}

TEST(Scheduler, PreemptsNewestByRecomputeAndResumesWithPrefixHit) {
  Scheduler s(4, 2, 8, 2);
  s.add(1, tokens(10, 4), up_to(3));
  s.add(2, tokens(20, 4), up_to(3));
  EXPECT_EQ(s.schedule().sample, (Ids{1, 2}));
  s.update(Tokens{50, 60});

  SchedulerStep b = s.schedule();  // seq 1 needs a block: seq 2 gives its own back
  EXPECT_EQ(b.preempted, Ids{2});
  EXPECT_EQ(b.seqs, (Rows{{1, 1, 5}}));
  EXPECT_EQ(s.num_waiting(), 1);
  s.update(Tokens{51});

  SchedulerStep c = s.schedule();  // seq 2's recompute does not fit beside seq 1 yet
  EXPECT_EQ(c.seqs, (Rows{{1, 1, 6}}));
  const std::vector<FinishedSeq> done = s.update(Tokens{52});
  EXPECT_EQ(done, (std::vector<FinishedSeq>{{1, {50, 51, 52}, FinishReason::kLength}}));

  SchedulerStep d = s.schedule();  // its first prompt block is still cached
  EXPECT_EQ(d.seqs, (Rows{{2, 3, 5}}));
  EXPECT_EQ(d.input_ids, (Tokens{22, 23, 60}));
  EXPECT_EQ(d.positions, (Ints{2, 3, 4}));
  EXPECT_EQ(s.blocks().prefix_hits(), 1);
  s.update(Tokens{61});
  s.schedule();
  EXPECT_EQ(s.update(Tokens{62}),
            (std::vector<FinishedSeq>{{2, {60, 61, 62}, FinishReason::kLength}}));
  EXPECT_EQ(s.num_running(), 0);
  EXPECT_EQ(s.blocks().num_free_blocks(), 4);
}

TEST(Scheduler, AFullyCachedPromptStillQueriesItsLastToken) {
  Scheduler s(8, 4, 16, 2);
  s.add(1, tokens(0, 8), up_to(1));
  s.schedule();
  ASSERT_EQ(s.update(Tokens{9}).size(), 1u);
  s.add(2, tokens(0, 8), up_to(1));
  SchedulerStep b = s.schedule();
  EXPECT_EQ(b.seqs, (Rows{{2, 1, 8}}));
  EXPECT_EQ(b.positions, Ints{7});
  EXPECT_EQ(b.sample, Ids{2});
}

TEST(Scheduler, StopsOnEosThenStopTokensThenLength) {
  Scheduler s(16, 4, 16, 4);
  s.add(1, {1}, SamplingParams{3, 0, {7}});
  s.add(2, {1}, SamplingParams{3, 0, {7}});
  s.add(3, {1}, SamplingParams{1, 0, {7}});
  s.add(4, {1}, SamplingParams{3, std::nullopt, {}});
  s.schedule();
  EXPECT_EQ(s.update(Tokens{5, 7, 0, 0}), (std::vector<FinishedSeq>{{2, {7}, FinishReason::kStop},
                                                                    {3, {0}, FinishReason::kEos}}));
  EXPECT_EQ(s.schedule().sample, (Ids{1, 4}));
  EXPECT_EQ(s.update(Tokens{0, 5}), (std::vector<FinishedSeq>{{1, {5, 0}, FinishReason::kEos}}));
  s.schedule();
  EXPECT_EQ(s.update(Tokens{6}), (std::vector<FinishedSeq>{{4, {0, 5, 6}, FinishReason::kLength}}));
}

TEST(Scheduler, AbortFreesBlocksWherever) {
  Scheduler s(4, 4, 4, 2);
  s.add(1, tokens(0, 6), up_to(2));
  s.add(2, tokens(10, 2), up_to(2));
  s.schedule();
  EXPECT_EQ(s.blocks().num_free_blocks(), 3);
  s.abort(1);
  s.abort(2);
  EXPECT_EQ(s.blocks().num_free_blocks(), 4);
  EXPECT_EQ(s.num_running() + s.num_waiting(), 0);
}

TEST(Scheduler, VerifiesDraftsAndKeepsKvOfTheAcceptedOnes) {
  Scheduler s(8, 2, 8, 2);
  s.add(1, {1, 2, 3}, up_to(10));
  s.schedule();
  s.update(Tokens{7});
  EXPECT_THROW(s.propose(2, {1}), std::out_of_range);
  EXPECT_THROW(s.propose(1, {1, -1}), std::invalid_argument);
  s.propose(1, {8, 9, 10});
  const SchedulerStep step = s.schedule();
  EXPECT_EQ(step.seqs, (Rows{{1, 4, 7, 3}}));
  EXPECT_EQ(step.input_ids, (Tokens{7, 8, 9, 10}));
  EXPECT_EQ(s.blocks().num_tokens(1), 7);
  const std::vector<int32_t> bad{5};
  EXPECT_THROW(s.update(Tokens{8, 9, 10, 11, 12}, bad), std::invalid_argument);
  const std::vector<int32_t> two{2};
  EXPECT_TRUE(s.update(Tokens{8, 4}, two).empty());
  // KV for 1 2 3 7 8; the dropped drafts' last block went back to the pool.
  EXPECT_EQ(s.blocks().num_tokens(1), 5);
  EXPECT_EQ(s.blocks().block_table(1).size(), 3u);
  EXPECT_EQ(s.blocks().num_cached_blocks(), 2);
  const SchedulerStep next = s.schedule();
  EXPECT_EQ(next.input_ids, Tokens{4});
  EXPECT_EQ(next.positions, Ints{5});
}

TEST(Scheduler, SchedulesAheadOfTheLastStepsTokens) {
  Scheduler s(16, 2, 8, 4);
  s.add(1, tokens(10, 3), up_to(10));
  s.add(2, tokens(20, 3), up_to(5));
  s.schedule();
  const SchedulerStep b = s.schedule();
  EXPECT_EQ(b.input_ids, (Tokens{0, 0}));
  EXPECT_EQ(b.positions, (Ints{3, 3}));
  EXPECT_EQ(b.pending, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(s.blocks().num_cached_blocks(), 2);  // 10 11 and 20 21; 12 ? waits for its token
  s.abort(2);                                    // while two steps are owed
  EXPECT_TRUE(s.update(Tokens{13, 7}).empty());
  EXPECT_EQ(s.blocks().num_cached_blocks(), 3);  // 12 13 confirmed
  EXPECT_TRUE(s.update(Tokens{14, 8}).empty());  // sequence 2's row is ignored
  s.propose(1, {3});
  EXPECT_EQ(s.schedule().seqs, (Rows{{1, 2, 6, 1}}));
  EXPECT_THROW(s.schedule(), std::logic_error);  // not ahead of a step with drafts
}

// Random workloads, always one step ahead, small caches (preemption), a small vocabulary (eos
// and stop tokens are common) and aborts while steps are owed. Under the sanitizers this is
// where a bad index would show; the checks are the ones the engine relies on.
TEST(Scheduler, RandomWorkloadsAheadKeepEveryTokenAndFreeEveryBlock) {
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int round = 0; round < 200; ++round) {
    const int64_t seqs = pick(1, 5);
    Scheduler s(pick(3, 12), pick(1, 4), pick(int(seqs), 16), seqs);
    std::map<SeqId, Tokens> fed;  // the tokens each live sequence was given
    std::deque<SchedulerStep> owed;
    SeqId next = 0;
    auto update = [&] {
      const SchedulerStep step = owed.front();
      owed.pop_front();
      Tokens tokens;
      for (SeqId seq : step.sample) {
        tokens.push_back(TokenId(pick(0, 11)));
        if (fed.count(seq) != 0) fed[seq].push_back(tokens.back());
      }
      for (const FinishedSeq& f : s.update(tokens)) {
        ASSERT_TRUE(fed.count(f.seq) != 0);
        const Tokens& all = fed[f.seq];
        ASSERT_LE(f.tokens.size(), all.size());
        EXPECT_TRUE(std::equal(f.tokens.begin(), f.tokens.end(), all.begin()));
        fed.erase(f.seq);
      }
    };
    for (int i = 0; i < 60 || !owed.empty() || s.num_running() + s.num_waiting() > 0; ++i) {
      ASSERT_LT(i, 5000) << "the workload does not drain";
      const bool adding = i < 60;
      if (adding && pick(0, 2) == 0) {
        Tokens prompt;
        for (int t = pick(1, 10); t > 0; --t) prompt.push_back(TokenId(pick(0, 7)));
        try {
          s.add(next, prompt, SamplingParams{pick(1, 8), TokenId(0), {TokenId(pick(0, 11))}});
          fed[next] = {};
        } catch (const std::invalid_argument&) {
        }
        ++next;
      }
      if (!fed.empty() && pick(0, 30) == 0) {
        const SeqId victim = fed.begin()->first;
        s.abort(victim);
        fed.erase(victim);
      }
      SchedulerStep step = s.schedule();
      for (size_t row = 0; row < step.seqs.size(); ++row) {
        const int32_t p = step.pending[row];
        if (p < 0) continue;
        ASSERT_FALSE(owed.empty());
        EXPECT_EQ(owed.back().sample.at(size_t(p)), step.seqs[row].seq);
      }
      if (!step.sample.empty()) owed.push_back(std::move(step));
      while (owed.size() > 1 || (!adding && !owed.empty())) update();
    }
    EXPECT_EQ(s.num_running() + s.num_waiting(), 0);
    EXPECT_EQ(s.blocks().num_free_blocks(), s.blocks().num_blocks());
  }
}

}  // namespace
}  // namespace stoker
