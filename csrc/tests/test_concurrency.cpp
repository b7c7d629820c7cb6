// ThreadPool, run_batch / run_batch_async and HostArena.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/arena.hpp"
#include "core/batch.hpp"
#include "core/thread_pool.hpp"
#include "test_util.hpp"

namespace stoker {
namespace {

using test::Bytes;

// Runs `f` on another thread and fails (then aborts: a hung pool cannot be cleaned up) when it
// takes longer than `seconds`.
template <typename F>
void within(double seconds, const std::string& what, F f) {
  test::Watchdog dog(seconds);
  dog.arm(what);
  f();
  dog.disarm();
}

TEST(ThreadPool, EveryIndexOnceDoneAfterAll) {
  ThreadPool pool(4);
  EXPECT_EQ(pool.size(), 4u);
  constexpr int kSubmitters = 4, kJobsEach = 50;
  struct JobState {
    size_t n = 0;
    std::vector<std::atomic<int>> hits;
    std::atomic<size_t> finished{0};
    std::atomic<int> done_calls{0};
    std::atomic<bool> done_early{false};
    std::atomic<bool> bad_worker{false};
    explicit JobState(size_t count) : n(count), hits(count) {}
  };
  std::vector<std::unique_ptr<JobState>> jobs;
  for (int s = 0; s < kSubmitters * kJobsEach; ++s) {
    jobs.push_back(std::make_unique<JobState>(size_t(1 + (s * 37) % 97)));
  }
  within(30, "thread pool jobs", [&] {
    std::vector<std::thread> submitters;
    for (int s = 0; s < kSubmitters; ++s) {
      submitters.emplace_back([&, s] {
        for (int j = 0; j < kJobsEach; ++j) {
          JobState* st = jobs[size_t(s * kJobsEach + j)].get();
          const size_t workers = pool.size();
          pool.submit(
              st->n,
              [st, workers](size_t i, size_t worker) {
                if (worker >= workers) st->bad_worker = true;
                st->hits[i].fetch_add(1);
                if ((i * 7) % 13 == 0) std::this_thread::yield();
                st->finished.fetch_add(1);
              },
              [st] {
                if (st->finished.load() != st->n) st->done_early = true;
                st->done_calls.fetch_add(1);
              });
        }
      });
    }
    for (auto& t : submitters) t.join();
    pool.wait_idle();
  });
  for (size_t j = 0; j < jobs.size(); ++j) {
    const JobState& st = *jobs[j];
    EXPECT_EQ(st.done_calls.load(), 1) << "job " << j;
    EXPECT_FALSE(st.done_early.load()) << "job " << j << ": done ran before every index finished";
    EXPECT_FALSE(st.bad_worker.load()) << "job " << j << ": worker index out of range";
    for (size_t i = 0; i < st.n; ++i) {
      ASSERT_EQ(st.hits[i].load(), 1) << "job " << j << " index " << i;
    }
  }
}

TEST(ThreadPool, WorkersRunNiceLevelsBelowTheirCreator) {
  errno = 0;
  const int base = getpriority(PRIO_PROCESS, 0);
  ASSERT_EQ(errno, 0);
  constexpr int kWorkers = 3;
  for (const int niceness : {0, 4}) {
    ThreadPool pool(kWorkers, niceness);
    EXPECT_EQ(pool.niceness(), niceness);
    std::vector<int> seen(64, -100);
    std::promise<void> finished;
    pool.submit(
        seen.size(),
        [&](size_t i, size_t) {
          seen[i] = getpriority(PRIO_PROCESS, 0);
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        },
        [&] { finished.set_value(); });
    finished.get_future().wait();
    for (const int nice : seen) EXPECT_EQ(nice, std::min(base + niceness, 19));
  }
  // The creating thread keeps its own priority.
  EXPECT_EQ(getpriority(PRIO_PROCESS, 0), base);
  EXPECT_THROW(ThreadPool(1, -1), std::invalid_argument);
  EXPECT_THROW(ThreadPool(1, 20), std::invalid_argument);
}

TEST(ThreadPool, WaitIdleWaitsForSlowJobs) {
  ThreadPool pool(2);
  std::atomic<int> completed{0};
  within(30, "wait_idle", [&] {
    for (int j = 0; j < 5; ++j) {
      pool.submit(
          3, [&](size_t, size_t) { std::this_thread::sleep_for(std::chrono::milliseconds(20)); },
          [&] { completed.fetch_add(1); });
    }
    pool.wait_idle();
  });
  EXPECT_EQ(completed.load(), 5);
  // Idle already: returns at once, and twice in a row.
  within(5, "wait_idle when idle", [&] {
    pool.wait_idle();
    pool.wait_idle();
  });
}

TEST(ThreadPool, EmptyJobStillCompletes) {
  ThreadPool pool(2);
  std::atomic<int> done{0}, body{0};
  within(10, "empty job", [&] {
    pool.submit(0, [&](size_t, size_t) { body.fetch_add(1); }, [&] { done.fetch_add(1); });
    pool.wait_idle();
  });
  EXPECT_EQ(body.load(), 0);
  EXPECT_EQ(done.load(), 1);
}

TEST(ThreadPool, DestructorDrainsWork) {
  std::atomic<int> ran{0}, done{0};
  within(30, "destructor", [&] {
    ThreadPool pool(3);
    for (int j = 0; j < 20; ++j) {
      pool.submit(10, [&](size_t, size_t) { ran.fetch_add(1); }, [&] { done.fetch_add(1); });
    }
  });
  EXPECT_EQ(ran.load(), 200);
  EXPECT_EQ(done.load(), 20);
}

// Batches -----------------------------------------------------------------------------------------

TEST(Batch, MixedItemsReportPerIndex) {
  Spec spec;
  spec.resize_h = 40;
  spec.crop_h = spec.crop_w = 32;
  spec.dtype = DType::kFloat32;
  spec.normalize = true;
  spec.mean = {0.5f, 0.5f, 0.5f};
  spec.std = {0.25f, 0.5f, 1.0f};
  spec.max_pixels = 200 * 200;
  auto pre = std::make_shared<const Preprocessor>(spec);
  const Bytes jpeg = test::encode_jpeg(test::make_rgb(120, 80, 1), {});
  const Bytes png = test::encode_png(test::make_rgb(50, 70, 2), test::PngKind::kRgb8, false).data;
  const Bytes big = test::encode_jpeg(test::make_rgb(300, 200, 3), {});
  const Bytes garbage(64, 0x33);
  const Bytes cut(jpeg.begin(), jpeg.begin() + ptrdiff_t(jpeg.size() / 3));
  struct Item {
    const Bytes* data;
    Status status;
  };
  const std::vector<Item> plan = {
      {&jpeg, Status::kOk},     {nullptr, Status::kEmpty},
      {&png, Status::kOk},      {&garbage, Status::kUnsupported},
      {&cut, Status::kCorrupt}, {&big, Status::kTooLarge},
      {&jpeg, Status::kOk},     {&png, Status::kOk},
  };
  // Repeat the plan so several workers take part.
  std::vector<ByteSpan> items;
  std::vector<Status> expected;
  for (int r = 0; r < 6; ++r) {
    for (const Item& it : plan) {
      items.push_back(it.data ? ByteSpan{it.data->data(), it.data->size()} : ByteSpan{});
      expected.push_back(it.status);
    }
  }
  const size_t item_bytes = spec.item_bytes();
  std::vector<uint8_t> out(items.size() * item_bytes + 64, 0xA5);
  // Reference outputs, one item at a time.
  auto single = [&](const Bytes* data) {
    std::vector<uint8_t> o(item_bytes);
    Scratch scratch;
    ItemResult r;
    pre->run(data ? data->data() : nullptr, data ? data->size() : 0, o.data(), scratch, r);
    return o;
  };
  ThreadPool pool(3);
  BatchResult result;
  within(60, "run_batch", [&] { result = run_batch(pool, pre, items, out.data()); });
  ASSERT_EQ(result.items.size(), items.size());
  size_t failures = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const Item& it = plan[i % plan.size()];
    EXPECT_EQ(result.items[i].status, expected[i])
        << "item " << i << ": " << status_name(result.items[i].status) << " "
        << result.items[i].message;
    if (expected[i] != Status::kOk) {
      ++failures;
      EXPECT_FALSE(result.items[i].message.empty()) << "item " << i;
    }
    EXPECT_EQ(std::memcmp(out.data() + i * item_bytes, single(it.data).data(), item_bytes), 0)
        << "item " << i << " differs from the same item preprocessed alone";
  }
  EXPECT_EQ(result.failed(), failures);
  for (size_t i = items.size() * item_bytes; i < out.size(); ++i) {
    ASSERT_EQ(out[i], 0xA5) << "written past the batch";
  }
}

TEST(Batch, AsyncCallsDoneOnceAndEmptyBatch) {
  Spec spec;
  spec.resize_h = 16;
  spec.crop_h = spec.crop_w = 16;
  spec.dtype = DType::kUInt8;
  auto pre = std::make_shared<const Preprocessor>(spec);
  const Bytes jpeg = test::encode_jpeg(test::make_rgb(40, 30, 7), {});
  ThreadPool pool(2);
  std::vector<uint8_t> out(10 * spec.item_bytes());
  std::atomic<int> calls{0};
  std::promise<BatchResult> promise;
  auto future = promise.get_future();
  within(30, "run_batch_async", [&] {
    run_batch_async(pool, pre, std::vector<ByteSpan>(10, ByteSpan{jpeg.data(), jpeg.size()}),
                    out.data(), [&](BatchResult&& r) {
                      if (calls.fetch_add(1) == 0) promise.set_value(std::move(r));
                    });
    const BatchResult r = future.get();
    EXPECT_EQ(r.items.size(), 10u);
    EXPECT_EQ(r.failed(), 0u);
    pool.wait_idle();
  });
  EXPECT_EQ(calls.load(), 1);
  // An empty batch completes (its `done` still runs once).
  BatchResult empty;
  within(10, "empty batch", [&] { empty = run_batch(pool, pre, {}, nullptr); });
  EXPECT_TRUE(empty.items.empty());
  EXPECT_EQ(empty.failed(), 0u);
}

// HostArena ---------------------------------------------------------------------------------------

TEST(HostArena, ReuseCountsHits) {
  HostArena arena;
  const HostBlock a = arena.acquire(10000, false);
  ASSERT_NE(a.ptr, nullptr);
  EXPECT_GE(a.size, 10000u);
  EXPECT_FALSE(a.pinned);
  std::memset(a.ptr, 1, 10000);
  ArenaStats s = arena.stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 0u);
  EXPECT_GE(s.live_bytes, 10000u);
  arena.release(a);
  s = arena.stats();
  EXPECT_EQ(s.live_bytes, 0u);
  EXPECT_GE(s.cached_bytes, 10000u);
  const HostBlock b = arena.acquire(10000, false);
  s = arena.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(b.ptr, a.ptr) << "the cached block is reused";
  EXPECT_EQ(s.cached_bytes, 0u);
  arena.release(b);
  arena.trim();
  s = arena.stats();
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(s.live_bytes, 0u);
  const HostBlock c = arena.acquire(10000, false);
  EXPECT_EQ(arena.stats().misses, 2u) << "trim frees the cache";
  arena.release(c);
}

TEST(HostArena, LiveBlocksDoNotOverlap) {
  HostArena arena;
  test::Rng rng(9);
  std::vector<HostBlock> live;
  for (int round = 0; round < 200; ++round) {
    if (!live.empty() && rng.chance(0.4)) {
      const size_t k = rng.below(live.size());
      // The block still holds its own pattern.
      const uint8_t* p = static_cast<const uint8_t*>(live[k].ptr);
      ASSERT_EQ(p[0], uint8_t(reinterpret_cast<uintptr_t>(live[k].ptr) >> 12));
      ASSERT_EQ(p[live[k].size - 1], uint8_t(reinterpret_cast<uintptr_t>(live[k].ptr) >> 12));
      arena.release(live[k]);
      live.erase(live.begin() + ptrdiff_t(k));
      continue;
    }
    const size_t bytes = size_t(1 + rng.below(100000));
    HostBlock b = arena.acquire(bytes, false);
    ASSERT_NE(b.ptr, nullptr);
    ASSERT_GE(b.size, bytes);
    std::memset(b.ptr, uint8_t(reinterpret_cast<uintptr_t>(b.ptr) >> 12), b.size);
    live.push_back(b);
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
    for (const HostBlock& h : live) {
      ranges.emplace_back(reinterpret_cast<uintptr_t>(h.ptr),
                          reinterpret_cast<uintptr_t>(h.ptr) + std::max<size_t>(h.size, 1));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      ASSERT_LE(ranges[i - 1].second, ranges[i].first) << "live blocks overlap";
    }
  }
  for (const HostBlock& b : live) arena.release(b);
  EXPECT_EQ(arena.stats().live_bytes, 0u);
}

TEST(HostArena, CacheLimitAndThreads) {
  HostArena arena(64 * 1024);
  std::vector<HostBlock> blocks;
  for (int i = 0; i < 8; ++i) blocks.push_back(arena.acquire(30000, false));
  for (const HostBlock& b : blocks) arena.release(b);
  EXPECT_LE(arena.stats().cached_bytes, 64u * 1024) << "the cache stays under its limit";
  EXPECT_EQ(arena.stats().live_bytes, 0u);
  // Concurrent acquire/release from several threads.
  std::vector<std::thread> threads;
  std::atomic<bool> bad{false};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      test::Rng rng{uint64_t(t)};
      for (int i = 0; i < 300; ++i) {
        const size_t n = 1 + rng.below(50000);
        HostBlock b = arena.acquire(n, false);
        if (b.ptr == nullptr || b.size < n) bad = true;
        std::memset(b.ptr, t, n);
        for (size_t k = 0; k < n; k += 997) {
          if (static_cast<uint8_t*>(b.ptr)[k] != uint8_t(t)) bad = true;
        }
        arena.release(b);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_FALSE(bad.load());
  EXPECT_EQ(arena.stats().live_bytes, 0u);
  EXPECT_LE(arena.stats().cached_bytes, 64u * 1024);
}

TEST(HostArena, PinningWithBogusLibraryFails) {
  HostArena arena;
  EXPECT_FALSE(arena.pinning_enabled());
  std::string error;
  EXPECT_FALSE(arena.enable_pinning("/nonexistent/libcudart-bogus.so.99", error));
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(arena.pinning_enabled());
  // A library that loads but is not the CUDA runtime.
  error.clear();
  EXPECT_FALSE(arena.enable_pinning("libm.so.6", error));
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(arena.pinning_enabled());
  // Unpinned blocks still work.
  const HostBlock b = arena.acquire(100, false);
  EXPECT_NE(b.ptr, nullptr);
  arena.release(b);
}

}  // namespace
}  // namespace stoker
