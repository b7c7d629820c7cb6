#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "core/feeder.hpp"
#include "core/histogram.hpp"
#include "test_util.hpp"

namespace stoker {
namespace {

using namespace std::chrono_literals;

std::shared_ptr<const Preprocessor> uint8_preprocessor() {
  Spec s;
  s.resize_h = s.resize_w = 40;
  s.crop_h = s.crop_w = 32;
  s.layout = Layout::kNHWC;
  s.dtype = DType::kUInt8;
  return std::make_shared<Preprocessor>(s);
}

FeederConfig feeder_config(size_t max_batch, size_t slots, size_t capacity = 256) {
  FeederConfig c;
  c.batcher.max_batch_size = max_batch;
  c.batcher.max_delay = 500us;
  c.batcher.capacity = capacity;
  c.slots = slots;
  return c;
}

TEST(Histogram, BucketsCoverEveryValueWithinAnEighth) {
  for (uint64_t v : {0ull, 1ull, 7ull, 8ull, 9ull, 15ull, 16ull, 100ull, 1000ull, 123456789ull}) {
    const size_t b = Histogram::bucket_of(v);
    EXPECT_GE(Histogram::upper_bound(b), v);
    if (b > 0) {
      EXPECT_LT(Histogram::upper_bound(b - 1), v);
    }
    EXPECT_LE(double(Histogram::upper_bound(b)), double(v) * 1.125 + 1.0);
  }
  EXPECT_EQ(Histogram::bucket_of(uint64_t{1} << 60), Histogram::kBuckets - 1);
}

TEST(Histogram, SnapshotCountsAcrossThreads) {
  Histogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h] {
      for (uint64_t i = 0; i < 10000; ++i) h.record(i % 100);
    });
  }
  for (auto& t : threads) t.join();
  const Histogram::Snapshot s = h.snapshot();
  EXPECT_EQ(s.count, 40000u);
  EXPECT_EQ(s.sum, 4u * 100u * (99u * 100u / 2u));
  EXPECT_EQ(s.max, 99u);
  h.reset();
  EXPECT_EQ(h.snapshot().count, 0u);
}

TEST(JpegProbe, AcceptsOnlyUprightSequentialColorJpeg) {
  const test::Image rgb = test::make_rgb(48, 40, 3);
  EXPECT_TRUE(
      jpeg_gpu_friendly(test::encode_jpeg(rgb, {}).data(), test::encode_jpeg(rgb, {}).size()));
  auto check = [&](test::JpegOptions o) {
    const test::Bytes b = test::encode_jpeg(rgb, o);
    return jpeg_gpu_friendly(b.data(), b.size());
  };
  EXPECT_TRUE(check({.restart_rows = 1}));
  EXPECT_TRUE(check({.orientation = 1}));
  EXPECT_FALSE(check({.progressive = true}));
  EXPECT_FALSE(check({.arithmetic = true}));
  EXPECT_FALSE(check({.sampling = test::Sampling::kGray}));
  EXPECT_FALSE(check({.orientation = 6}));
  const test::Bytes good = test::encode_jpeg(rgb, {});
  for (size_t cut = 0; cut < 200 && cut < good.size(); ++cut) {
    jpeg_gpu_friendly(good.data(), cut);  // must not read past the end (ASan)
  }
}

TEST(Feeder, PreparesEveryRequestOnceAndReportsFailuresPerRow) {
  auto pool = std::make_shared<ThreadPool>(2);
  HostArena arena;
  auto pre = uint8_preprocessor();
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(64, 48, 1), {});
  const test::Bytes junk = {1, 2, 3, 4};
  Feeder feeder(feeder_config(4, 2), pre, pool, arena);
  for (uint64_t i = 0; i < 10; ++i) {
    const test::Bytes& b = i == 5 ? junk : jpeg;
    ASSERT_EQ(
        feeder.submit(i, Priority::kNormal, SteadyClock::time_point::max(), b.data(), b.size()),
        Admission::kAccepted);
  }
  feeder.close();
  std::set<uint64_t> seen;
  PreparedBatch batch;
  size_t failed = 0;
  while (feeder.next(batch)) {
    ASSERT_GE(batch.slot, 0);
    ASSERT_LE(batch.requests.size(), 4u);
    EXPECT_LE(batch.formed_ns, batch.prep_start_ns);
    EXPECT_LE(batch.prep_start_ns, batch.prep_end_ns);
    for (size_t i = 0; i < batch.requests.size(); ++i) {
      EXPECT_TRUE(seen.insert(batch.requests[i].id).second);
      const bool bad = batch.requests[i].id == 5;
      EXPECT_EQ(batch.items[i].status != Status::kOk, bad);
      failed += bad;
    }
    feeder.release(batch.slot);
  }
  EXPECT_EQ(seen.size(), 10u);
  EXPECT_EQ(failed, 1u);
}

TEST(Feeder, LetsGoOfItsPoolOnceDrained) {
  auto pool = std::make_shared<ThreadPool>(2);
  const std::weak_ptr<ThreadPool> watch = pool;
  HostArena arena;
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(32, 24, 2), {});
  Feeder feeder(feeder_config(2, 2), uint8_preprocessor(), std::move(pool), arena);
  for (uint64_t i = 0; i < 5; ++i) {
    ASSERT_EQ(feeder.submit(i, Priority::kNormal, SteadyClock::time_point::max(), jpeg.data(),
                            jpeg.size()),
              Admission::kAccepted);
  }
  feeder.close();
  PreparedBatch batch;
  size_t served = 0;
  while (feeder.next(batch)) {
    EXPECT_FALSE(watch.expired());  // still preparing
    served += batch.requests.size();
    feeder.release(batch.slot);
  }
  EXPECT_EQ(served, 5u);
  EXPECT_TRUE(watch.expired());  // its threads joined while the feeder still exists
  EXPECT_FALSE(feeder.next(batch));
}

TEST(Feeder, AFullRingHoldsRequestsBackIntoFullerBatches) {
  auto pool = std::make_shared<ThreadPool>(2);
  HostArena arena;
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(64, 48, 1), {});
  Feeder feeder(feeder_config(8, 1), uint8_preprocessor(), pool, arena);
  EXPECT_THROW(feeder.release(0), std::logic_error);  // in the ring, never handed out
  ASSERT_EQ(
      feeder.submit(0, Priority::kNormal, SteadyClock::time_point::max(), jpeg.data(), jpeg.size()),
      Admission::kAccepted);
  PreparedBatch first;
  ASSERT_TRUE(feeder.next(first));
  EXPECT_EQ(first.requests.size(), 1u);
  // While the only slot is held, requests wait in the batcher and then leave together.
  for (uint64_t i = 1; i <= 8; ++i) {
    feeder.submit(i, Priority::kNormal, SteadyClock::time_point::max(), jpeg.data(), jpeg.size());
  }
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(feeder.waiting(), 8u);
  feeder.release(first.slot);
  PreparedBatch second;
  ASSERT_TRUE(feeder.next(second));
  EXPECT_EQ(second.requests.size(), 8u);
  EXPECT_THROW(feeder.release(first.slot + 5), std::out_of_range);
  feeder.release(second.slot);
  EXPECT_THROW(feeder.release(second.slot), std::logic_error);
}

TEST(Feeder, ExpiredRequestsComeBackWithoutASlot) {
  auto pool = std::make_shared<ThreadPool>(1);
  HostArena arena;
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(64, 48, 1), {});
  Feeder feeder(feeder_config(4, 2), uint8_preprocessor(), pool, arena);
  feeder.submit(1, Priority::kNormal, SteadyClock::now() - 1ms, jpeg.data(), jpeg.size());
  std::vector<Request> expired;
  ASSERT_TRUE(feeder.next_expired(expired));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].id, 1u);
  feeder.close();
  PreparedBatch batch;
  EXPECT_FALSE(feeder.next(batch));
  EXPECT_FALSE(feeder.next_expired(expired));
}

TEST(Feeder, RequestsExpireWhileEverySlotIsHeld) {
  auto pool = std::make_shared<ThreadPool>(1);
  HostArena arena;
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(64, 48, 1), {});
  Feeder feeder(feeder_config(1, 1), uint8_preprocessor(), pool, arena);
  feeder.submit(1, Priority::kNormal, SteadyClock::time_point::max(), jpeg.data(), jpeg.size());
  PreparedBatch held;
  ASSERT_TRUE(feeder.next(held));
  const auto start = SteadyClock::now();
  feeder.submit(2, Priority::kNormal, start + 20ms, jpeg.data(), jpeg.size());
  std::vector<Request> expired;
  ASSERT_TRUE(feeder.next_expired(expired));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0].id, 2u);
  EXPECT_GE(SteadyClock::now() - start, 20ms);
  EXPECT_LT(SteadyClock::now() - start, 2s);
  feeder.release(held.slot);
}

TEST(Feeder, GpuShareDefersOnlyFriendlyJpegs) {
  auto pool = std::make_shared<ThreadPool>(2);
  HostArena arena;
  const test::Bytes plain = test::encode_jpeg(test::make_rgb(64, 48, 1), {});
  const test::Bytes progressive =
      test::encode_jpeg(test::make_rgb(64, 48, 1), {.progressive = true});
  Feeder feeder(feeder_config(8, 2), uint8_preprocessor(), pool, arena);
  EXPECT_THROW(feeder.set_gpu_share(1.5), std::invalid_argument);
  feeder.set_gpu_share(0.5);
  for (uint64_t i = 0; i < 8; ++i) {
    const test::Bytes& b = i < 4 ? plain : progressive;
    feeder.submit(i, Priority::kNormal, SteadyClock::time_point::max(), b.data(), b.size());
  }
  PreparedBatch batch;
  ASSERT_TRUE(feeder.next(batch));
  ASSERT_EQ(batch.requests.size(), 8u);
  ASSERT_FALSE(batch.deferred.empty());
  for (uint32_t row : batch.deferred) EXPECT_LT(batch.requests[row].id, 4u);
  EXPECT_LE(batch.deferred.size(), 4u);
  for (const ItemResult& r : batch.items) EXPECT_EQ(r.status, Status::kOk);
  feeder.release(batch.slot);
}

TEST(Feeder, ManyProducersEveryRequestExactlyOnce) {
  auto pool = std::make_shared<ThreadPool>(2);
  HostArena arena;
  const test::Bytes jpeg = test::encode_jpeg(test::make_rgb(40, 40, 1), {});
  Feeder feeder(feeder_config(16, 3, 64), uint8_preprocessor(), pool, arena);
  std::atomic<uint64_t> rejected{0};
  std::vector<std::thread> producers;
  for (uint64_t p = 0; p < 4; ++p) {
    producers.emplace_back([&, p] {
      for (uint64_t i = 0; i < 300; ++i) {
        const Admission a = feeder.submit(p * 1000 + i, Priority(i % 2),
                                          SteadyClock::time_point::max(), jpeg.data(), jpeg.size());
        if (a == Admission::kFull) ++rejected;
      }
    });
  }
  std::set<uint64_t> seen;
  std::thread consumer([&] {
    PreparedBatch batch;
    while (feeder.next(batch)) {
      for (const Request& r : batch.requests) EXPECT_TRUE(seen.insert(r.id).second);
      feeder.release(batch.slot);
    }
  });
  for (auto& t : producers) t.join();
  feeder.close();
  consumer.join();
  EXPECT_EQ(seen.size() + rejected.load(), 1200u);
}

}  // namespace
}  // namespace stoker
