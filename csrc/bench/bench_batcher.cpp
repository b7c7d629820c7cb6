// The batcher's cost per request (submit, batch formation, hand-out) and per batch, with a
// dispatcher thread that does nothing but take batches. Prints one table row per scenario.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "core/batcher.hpp"

namespace {

using stoker::Admission;
using stoker::Batcher;
using stoker::BatcherConfig;
using stoker::Priority;
using stoker::Request;
using stoker::SteadyClock;

struct Result {
  double us_per_request;
  double mean_batch;
};

Result run(int producers, int per_producer, size_t max_batch) {
  BatcherConfig c;
  c.max_batch_size = max_batch;
  c.max_delay = std::chrono::microseconds(100);
  c.capacity = 1 << 20;  // never full here: this measures the batcher, not back-pressure
  Batcher b(c);
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      while (!go) {
      }
      for (int i = 0; i < per_producer; ++i) {
        const uint64_t id = uint64_t(p) * uint64_t(per_producer) + uint64_t(i);
        while (b.submit(id, i % 4 == 0 ? Priority::kHigh : Priority::kNormal) == Admission::kFull) {
          std::this_thread::yield();
        }
      }
    });
  }
  size_t batches = 0, requests = 0;
  const auto t0 = SteadyClock::now();
  go = true;
  std::thread consumer([&] {
    std::vector<Request> batch, expired;
    while (b.next(batch, expired)) {
      ++batches;
      requests += batch.size();
    }
  });
  for (std::thread& t : threads) t.join();
  b.close();
  consumer.join();
  const double total = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  return {total / double(requests) * 1e6, double(requests) / double(batches)};
}

// Decision and hand-out alone: the queue already holds every request, next() never waits.
double us_per_batch(size_t max_batch, size_t queued) {
  BatcherConfig c;
  c.max_batch_size = max_batch;
  c.capacity = queued;
  Batcher b(c);
  for (uint64_t i = 0; i < queued; ++i)
    b.submit(i, i % 4 == 0 ? Priority::kHigh : Priority::kNormal);
  std::vector<Request> batch, expired;
  batch.reserve(max_batch);
  size_t batches = 0;
  const auto t0 = SteadyClock::now();
  while (b.waiting() >= max_batch && b.next(batch, expired)) ++batches;
  return std::chrono::duration<double>(SteadyClock::now() - t0).count() / double(batches) * 1e6;
}

}  // namespace

int main() {
  std::printf(
      "end to end: producers submit, one dispatcher takes batches\n\n"
      "| producers | max batch | requests | us per request | mean batch |\n"
      "|---|---|---|---|---|\n");
  for (int producers : {1, 4}) {
    for (size_t max_batch : {8, 64}) {
      const int per = 200000 / producers;
      const Result r = run(producers, per, max_batch);
      std::printf("| %d | %zu | %d | %.3f | %.1f |\n", producers, max_batch, per * producers,
                  r.us_per_request, r.mean_batch);
    }
  }
  std::printf(
      "\nper batch: next() on a queue that already holds the batch (4096 queued)\n\n"
      "| max batch | us per batch | us per request |\n|---|---|---|\n");
  for (size_t max_batch : {8, 64}) {
    const double us = us_per_batch(max_batch, 4096);
    std::printf("| %zu | %.2f | %.3f |\n", max_batch, us, us / double(max_batch));
  }
  return 0;
}
