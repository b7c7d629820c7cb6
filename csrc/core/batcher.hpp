// Dynamic batching of single requests: a bounded two-priority queue that hands out batches when
// one is full, a preferred size is ready, or the oldest request has waited long enough. Expired
// requests are handed back separately, never batched; waiting requests can be cancelled.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace stoker {

using SteadyClock = std::chrono::steady_clock;

struct BatcherConfig {
  size_t max_batch_size = 32;
  std::chrono::microseconds max_delay{2000};
  // Sizes worth dispatching early (e.g. CUDA graph buckets); empty = any size once delayed.
  std::vector<size_t> preferred_sizes;
  size_t capacity = 4096;  // waiting requests; beyond it submit() rejects at once

  // Throws std::invalid_argument on an inconsistent configuration.
  void validate() const;
};

enum class Priority : uint8_t { kHigh = 0, kNormal = 1 };
enum class Admission : uint8_t { kAccepted, kFull, kClosed, kDuplicate };

struct Request {
  uint64_t id = 0;
  Priority priority = Priority::kNormal;
  SteadyClock::time_point enqueued;
  SteadyClock::time_point deadline = SteadyClock::time_point::max();
  // The request's bytes, borrowed: the submitter keeps them alive until the request is answered.
  const uint8_t* data = nullptr;
  size_t size = 0;
};

class Batcher {
 public:
  explicit Batcher(BatcherConfig config);

  Admission submit(uint64_t id, Priority priority,
                   SteadyClock::time_point deadline = SteadyClock::time_point::max(),
                   const uint8_t* data = nullptr, size_t size = 0);
  // Removes a request that is still waiting; false when it was already handed out or unknown.
  bool cancel(uint64_t id);
  // Blocks until there is a batch or expired requests to hand out, or the batcher is closed and
  // drained (then returns false). `batch` holds high-priority requests first, each level in
  // arrival order.
  bool next(std::vector<Request>& batch, std::vector<Request>& expired);
  // Hands out requests whose deadline passed without forming a batch; returns a time before
  // which no other waiting request expires.
  SteadyClock::time_point expire(SteadyClock::time_point now, std::vector<Request>& expired);
  // Wakes every waiter; requests still queued are handed out as batches without further delay.
  void close();
  size_t waiting() const;
  const BatcherConfig& config() const { return config_; }

 private:
  using Queue = std::list<Request>;
  // The number of waiting requests to dispatch now (0: keep waiting), and until when to wait.
  size_t ready(SteadyClock::time_point now, SteadyClock::time_point& wake) const;
  void take_expired(SteadyClock::time_point now, std::vector<Request>& expired);

  BatcherConfig config_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  Queue queues_[2];
  std::unordered_map<uint64_t, Queue::iterator> index_;
  size_t waiting_ = 0;
  bool closed_ = false;
  // No waiting request has a deadline before this (a lower bound, tightened by each scan).
  SteadyClock::time_point earliest_deadline_ = SteadyClock::time_point::max();
  size_t sleepers_ = 0;  // dispatchers blocked in next()
  SteadyClock::time_point sleep_until_ = SteadyClock::time_point::max();
};

}  // namespace stoker
