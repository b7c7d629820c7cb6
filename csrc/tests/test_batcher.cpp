#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/batcher.hpp"

namespace stoker {
namespace {

using namespace std::chrono_literals;

BatcherConfig config(size_t max_batch, std::chrono::microseconds delay, size_t capacity = 64,
                     std::vector<size_t> preferred = {}) {
  BatcherConfig c;
  c.max_batch_size = max_batch;
  c.max_delay = delay;
  c.capacity = capacity;
  c.preferred_sizes = std::move(preferred);
  return c;
}

std::vector<uint64_t> ids(const std::vector<Request>& rs) {
  std::vector<uint64_t> out;
  for (const Request& r : rs) out.push_back(r.id);
  return out;
}

double seconds_since(SteadyClock::time_point t) {
  return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

TEST(Batcher, FullBatchGoesWithoutWaitingForTheDelay) {
  Batcher b(config(4, 10s));
  for (uint64_t i = 0; i < 6; ++i) ASSERT_EQ(b.submit(i, Priority::kNormal), Admission::kAccepted);
  std::vector<Request> batch, expired;
  const auto t0 = SteadyClock::now();
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_LT(seconds_since(t0), 1.0);
  EXPECT_EQ(ids(batch), (std::vector<uint64_t>{0, 1, 2, 3}));
  EXPECT_TRUE(expired.empty());
  EXPECT_EQ(b.waiting(), 2u);
}

TEST(Batcher, PartialBatchWaitsForTheDelay) {
  Batcher b(config(8, 30ms));
  const auto t0 = SteadyClock::now();
  for (uint64_t i = 0; i < 3; ++i) b.submit(i, Priority::kNormal);
  std::vector<Request> batch, expired;
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_GE(seconds_since(t0), 0.029);
  EXPECT_EQ(ids(batch), (std::vector<uint64_t>{0, 1, 2}));
}

TEST(Batcher, PreferredSizes) {
  Batcher b(config(8, 40ms, 64, {4, 2}));
  for (uint64_t i = 0; i < 4; ++i) b.submit(i, Priority::kNormal);
  std::vector<Request> batch, expired;
  auto t0 = SteadyClock::now();
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_LT(seconds_since(t0), 0.035) << "an exactly available preferred size goes at once";
  EXPECT_EQ(batch.size(), 4u);
  for (uint64_t i = 10; i < 13; ++i) b.submit(i, Priority::kNormal);
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_EQ(ids(batch), (std::vector<uint64_t>{10, 11})) << "delayed: the largest preferred fit";
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_EQ(ids(batch), (std::vector<uint64_t>{12}));
}

TEST(Batcher, HighPriorityFirstThenArrivalOrder) {
  Batcher b(config(3, 10s));
  b.submit(1, Priority::kNormal);
  b.submit(2, Priority::kNormal);
  b.submit(3, Priority::kHigh);
  b.submit(4, Priority::kHigh);
  std::vector<Request> batch, expired;
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_EQ(ids(batch), (std::vector<uint64_t>{3, 4, 1}));
}

TEST(Batcher, CapacityRejectsAtOnceAndRecovers) {
  Batcher b(config(2, 10s, 3));
  for (uint64_t i = 0; i < 3; ++i) EXPECT_EQ(b.submit(i, Priority::kNormal), Admission::kAccepted);
  const auto t0 = SteadyClock::now();
  EXPECT_EQ(b.submit(9, Priority::kHigh), Admission::kFull);
  EXPECT_LT(seconds_since(t0), 0.01);
  std::vector<Request> batch, expired;
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_EQ(b.submit(9, Priority::kNormal), Admission::kAccepted);
  EXPECT_EQ(b.submit(9, Priority::kNormal), Admission::kDuplicate);
}

TEST(Batcher, ExpiredRequestsAreHandedBackNotBatched) {
  Batcher b(config(8, 10s));
  const auto t0 = SteadyClock::now();
  b.submit(1, Priority::kNormal, t0 + 20ms);
  b.submit(2, Priority::kNormal);
  std::vector<Request> batch, expired;
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_GE(seconds_since(t0), 0.019);
  EXPECT_LT(seconds_since(t0), 5.0) << "a deadline must wake the dispatcher";
  EXPECT_TRUE(batch.empty());
  EXPECT_EQ(ids(expired), (std::vector<uint64_t>{1}));
  EXPECT_EQ(b.waiting(), 1u);
}

TEST(Batcher, CancelRemovesAWaitingRequestOnce) {
  Batcher b(config(2, 10s));
  b.submit(1, Priority::kNormal);
  b.submit(2, Priority::kNormal);
  b.submit(3, Priority::kNormal);
  EXPECT_TRUE(b.cancel(1));
  EXPECT_FALSE(b.cancel(1));
  EXPECT_FALSE(b.cancel(77));
  std::vector<Request> batch, expired;
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_EQ(ids(batch), (std::vector<uint64_t>{2, 3}));
  EXPECT_FALSE(b.cancel(2)) << "already handed out";
}

TEST(Batcher, CloseDrainsThenStops) {
  Batcher b(config(8, 10s));
  b.submit(1, Priority::kNormal);
  b.close();
  EXPECT_EQ(b.submit(2, Priority::kNormal), Admission::kClosed);
  std::vector<Request> batch, expired;
  ASSERT_TRUE(b.next(batch, expired));
  EXPECT_EQ(ids(batch), (std::vector<uint64_t>{1}));
  EXPECT_FALSE(b.next(batch, expired));
}

TEST(Batcher, CloseWakesABlockedConsumer) {
  Batcher b(config(8, 10s));
  std::thread closer([&] {
    std::this_thread::sleep_for(20ms);
    b.close();
  });
  std::vector<Request> batch, expired;
  EXPECT_FALSE(b.next(batch, expired));
  closer.join();
}

TEST(Batcher, InvalidConfigThrows) {
  EXPECT_THROW(Batcher(config(0, 1ms)), std::invalid_argument);
  EXPECT_THROW(Batcher(config(4, 1ms, 0)), std::invalid_argument);
  EXPECT_THROW(Batcher(config(4, -1ms)), std::invalid_argument);
  EXPECT_THROW(Batcher(config(4, 1ms, 8, {5})), std::invalid_argument);
}

// Many producers against one dispatcher: every accepted request comes out exactly once, in a
// batch or as expired, and no batch exceeds the maximum.
TEST(Batcher, EveryAcceptedRequestIsAnsweredExactlyOnce) {
  Batcher b(config(16, 200us, 256));
  constexpr int kProducers = 4, kPerProducer = 5000;
  std::atomic<int> accepted{0}, rejected{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        const uint64_t id = uint64_t(p) * kPerProducer + uint64_t(i);
        const auto deadline =
            i % 7 == 0 ? SteadyClock::now() + 50us : SteadyClock::time_point::max();
        const Priority pr = i % 3 == 0 ? Priority::kHigh : Priority::kNormal;
        if (b.submit(id, pr, deadline) == Admission::kAccepted) {
          ++accepted;
        } else {
          ++rejected;
        }
      }
    });
  }
  std::multiset<uint64_t> seen;
  std::thread consumer([&] {
    std::vector<Request> batch, expired;
    while (b.next(batch, expired)) {
      EXPECT_LE(batch.size(), 16u);
      for (const Request& r : batch) seen.insert(r.id);
      for (const Request& r : expired) seen.insert(r.id);
    }
  });
  for (std::thread& t : producers) t.join();
  b.close();
  consumer.join();
  EXPECT_EQ(accepted + rejected, kProducers * kPerProducer);
  EXPECT_EQ(int(seen.size()), accepted.load());
  EXPECT_EQ(std::set<uint64_t>(seen.begin(), seen.end()).size(), seen.size()) << "duplicates";
}

}  // namespace
}  // namespace stoker
