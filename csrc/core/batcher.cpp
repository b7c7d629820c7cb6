#include "core/batcher.hpp"

#include <algorithm>
#include <stdexcept>

namespace stoker {

void BatcherConfig::validate() const {
  if (max_batch_size == 0) throw std::invalid_argument("max_batch_size must be at least 1");
  if (max_delay.count() < 0) throw std::invalid_argument("max_delay must not be negative");
  if (capacity == 0) throw std::invalid_argument("capacity must be at least 1");
  for (size_t s : preferred_sizes) {
    if (s == 0 || s > max_batch_size) {
      throw std::invalid_argument("preferred batch sizes must be between 1 and max_batch_size");
    }
  }
}

Batcher::Batcher(BatcherConfig config) : config_(std::move(config)) {
  config_.validate();
  std::sort(config_.preferred_sizes.begin(), config_.preferred_sizes.end());
}

Admission Batcher::submit(uint64_t id, Priority priority, SteadyClock::time_point deadline,
                          const uint8_t* data, size_t size) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return Admission::kClosed;
    if (waiting_ >= config_.capacity) return Admission::kFull;
    if (index_.count(id) != 0) return Admission::kDuplicate;
    Queue& q = queues_[size_t(priority)];
    q.push_back(Request{id, priority, SteadyClock::now(), deadline, data, size});
    index_.emplace(id, std::prev(q.end()));
    ++waiting_;
    earliest_deadline_ = std::min(earliest_deadline_, deadline);
    // A sleeping dispatcher only needs waking when this request changes its plan: the first one
    // starts the delay clock, a full or preferred size can go now, or a deadline comes earlier.
    const bool wake =
        sleepers_ > 0 && (waiting_ == 1 || waiting_ >= config_.max_batch_size ||
                          std::binary_search(config_.preferred_sizes.begin(),
                                             config_.preferred_sizes.end(), waiting_) ||
                          deadline < sleep_until_);
    if (!wake) return Admission::kAccepted;
  }
  cv_.notify_one();
  return Admission::kAccepted;
}

bool Batcher::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  queues_[size_t(it->second->priority)].erase(it->second);
  index_.erase(it);
  --waiting_;
  return true;
}

void Batcher::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  cv_.notify_all();
}

SteadyClock::time_point Batcher::expire(SteadyClock::time_point now,
                                        std::vector<Request>& expired) {
  std::lock_guard<std::mutex> lock(mutex_);
  take_expired(now, expired);
  return earliest_deadline_;
}

size_t Batcher::waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return waiting_;
}

void Batcher::take_expired(SteadyClock::time_point now, std::vector<Request>& expired) {
  // Most requests carry no deadline: scan only once the earliest one has passed, and recompute
  // the earliest among those that stay.
  if (now < earliest_deadline_) return;
  earliest_deadline_ = SteadyClock::time_point::max();
  for (Queue& q : queues_) {
    for (auto it = q.begin(); it != q.end();) {
      if (it->deadline <= now) {
        expired.push_back(*it);
        index_.erase(it->id);
        it = q.erase(it);
        --waiting_;
      } else {
        earliest_deadline_ = std::min(earliest_deadline_, it->deadline);
        ++it;
      }
    }
  }
}

size_t Batcher::ready(SteadyClock::time_point now, SteadyClock::time_point& wake) const {
  if (waiting_ == 0) return 0;
  const size_t full = std::min(waiting_, config_.max_batch_size);
  if (full == config_.max_batch_size || closed_) return full;
  // A preferred size that is exactly available goes at once.
  if (std::binary_search(config_.preferred_sizes.begin(), config_.preferred_sizes.end(), full)) {
    return full;
  }
  SteadyClock::time_point oldest = SteadyClock::time_point::max();
  for (const Queue& q : queues_) {
    if (!q.empty()) oldest = std::min(oldest, q.front().enqueued);
  }
  const SteadyClock::time_point due = oldest + config_.max_delay;
  if (now < due) {
    wake = due;
    return 0;
  }
  // Delayed long enough: the largest preferred size that fits, else everything waiting.
  auto it = std::upper_bound(config_.preferred_sizes.begin(), config_.preferred_sizes.end(), full);
  return it == config_.preferred_sizes.begin() ? full : *std::prev(it);
}

bool Batcher::next(std::vector<Request>& batch, std::vector<Request>& expired) {
  batch.clear();
  expired.clear();
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    const SteadyClock::time_point now = SteadyClock::now();
    take_expired(now, expired);
    SteadyClock::time_point wake = SteadyClock::time_point::max();
    const size_t n = ready(now, wake);
    for (Queue& q : queues_) {
      while (batch.size() < n && !q.empty()) {
        batch.push_back(q.front());
        index_.erase(q.front().id);
        q.pop_front();
        --waiting_;
      }
    }
    if (!batch.empty() || !expired.empty()) return true;
    if (closed_ && waiting_ == 0) return false;
    // Deadlines also wake the dispatcher, so an expired request is answered without delay.
    wake = std::min(wake, earliest_deadline_);
    ++sleepers_;
    sleep_until_ = std::min(sleep_until_, wake);
    if (wake == SteadyClock::time_point::max()) {
      cv_.wait(lock);
    } else {
      cv_.wait_until(lock, wake);
    }
    if (--sleepers_ == 0) sleep_until_ = SteadyClock::time_point::max();
  }
}

}  // namespace stoker
