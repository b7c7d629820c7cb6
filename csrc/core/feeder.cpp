#include "core/feeder.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "core/thread_name.hpp"

namespace stoker {

int64_t steady_ns(SteadyClock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

Feeder::Feeder(FeederConfig config, std::shared_ptr<const Preprocessor> pre,
               std::shared_ptr<ThreadPool> pool, HostArena& arena)
    : batcher_(config.batcher), pre_(std::move(pre)), pool_(std::move(pool)), arena_(arena) {
  if (config.slots == 0) throw std::invalid_argument("the staging ring needs at least one slot");
  const size_t bytes = pre_->spec().item_bytes() * config.batcher.max_batch_size;
  try {
    for (size_t i = 0; i < config.slots; ++i) {
      blocks_.push_back(arena_.acquire(bytes, config.pinned));
      free_slots_.push_back(int(i));
    }
  } catch (...) {
    for (const HostBlock& b : blocks_) arena_.release(b);
    throw;
  }
  handed_out_.assign(blocks_.size(), false);
  dispatcher_ = std::thread([this] {
    name_this_thread("stoker-feeder");
    dispatch_loop();
  });
}

Feeder::~Feeder() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    aborting_ = true;
  }
  batcher_.close();
  free_cv_.notify_all();
  dispatcher_.join();
  // Pool workers may still be writing into slots.
  std::unique_lock<std::mutex> lock(mutex_);
  ready_cv_.wait(lock, [this] { return in_flight_ == 0; });
  for (const HostBlock& b : blocks_) arena_.release(b);
}

bool Feeder::pinned() const {
  return std::all_of(blocks_.begin(), blocks_.end(), [](const HostBlock& b) { return b.pinned; });
}

Admission Feeder::submit(uint64_t id, Priority priority, SteadyClock::time_point deadline,
                         const uint8_t* data, size_t size) {
  const Admission a = batcher_.submit(id, priority, deadline, data, size);
  if (a == Admission::kAccepted && deadline != SteadyClock::time_point::max()) {
    // A dispatcher waiting for a slot must still answer this request when it expires.
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++deadline_epoch_;
    }
    free_cv_.notify_all();
  }
  return a;
}

void Feeder::set_gpu_share(double share) {
  if (!(share >= 0.0 && share <= 1.0)) throw std::invalid_argument("gpu share must be in [0, 1]");
  gpu_share_.store(share, std::memory_order_relaxed);
}

void Feeder::close() { batcher_.close(); }

void Feeder::release(int slot) {
  if (slot < 0) return;
  if (size_t(slot) >= blocks_.size()) throw std::out_of_range("no such staging slot");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!handed_out_[size_t(slot)]) {
      throw std::logic_error("staging slot released twice, or never handed out");
    }
    handed_out_[size_t(slot)] = false;
    free_slots_.push_back(slot);
  }
  free_cv_.notify_one();
}

bool Feeder::next(PreparedBatch& out) {
  // Declared before the lock, so that a pool this feeder held last is joined after unlocking.
  std::shared_ptr<ThreadPool> retired;
  std::unique_lock<std::mutex> lock(mutex_);
  ready_cv_.wait(lock, [this] { return !ready_.empty() || (dispatcher_done_ && in_flight_ == 0); });
  if (ready_.empty()) {
    // Nothing will run on the pool again. A pool the process has since replaced (a new size)
    // ends its threads here rather than when the feeder is destroyed.
    retired = std::move(pool_);
    return false;
  }
  out = std::move(ready_.front());
  ready_.pop_front();
  // Only a slot held by the consumer may be released: one back in the ring (and perhaps taken
  // again by the dispatcher) must not be freed a second time.
  if (out.slot >= 0) handed_out_[size_t(out.slot)] = true;
  return true;
}

void Feeder::push_ready(PreparedBatch&& batch) {
  std::lock_guard<std::mutex> lock(mutex_);
  ready_.push_back(std::move(batch));
  --in_flight_;
  // Under the lock: once in_flight_ reaches zero the destructor may run, and the condition
  // variable must not be touched after it can see that.
  ready_cv_.notify_all();
}

void Feeder::push_expired(std::vector<Request>&& expired) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    expired_.insert(expired_.end(), expired.begin(), expired.end());
  }
  ready_cv_.notify_all();
}

bool Feeder::next_expired(std::vector<Request>& out) {
  out.clear();
  std::unique_lock<std::mutex> lock(mutex_);
  ready_cv_.wait(lock, [this] { return !expired_.empty() || dispatcher_done_; });
  out.swap(expired_);
  return !out.empty();
}

int Feeder::acquire_slot() {
  std::vector<Request> expired;
  for (;;) {
    uint64_t epoch;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      epoch = deadline_epoch_;
    }
    const SteadyClock::time_point wake = batcher_.expire(SteadyClock::now(), expired);
    if (!expired.empty()) {
      push_expired(std::move(expired));
      expired = {};
    }
    std::unique_lock<std::mutex> lock(mutex_);
    if (aborting_) return -1;
    if (!free_slots_.empty()) {
      const int slot = free_slots_.back();
      free_slots_.pop_back();
      return slot;
    }
    if (epoch != deadline_epoch_) continue;
    if (wake == SteadyClock::time_point::max()) {
      free_cv_.wait(lock);
    } else {
      free_cv_.wait_until(lock, wake);
    }
  }
}

void Feeder::dispatch_loop() {
  std::vector<Request> batch, expired;
  for (;;) {
    // Taking a slot first keeps requests in the batcher while the ring is busy, so they join
    // fuller batches instead of leaving early in small ones.
    const int slot = acquire_slot();
    if (slot < 0) break;
    const bool more = batcher_.next(batch, expired);
    if (!expired.empty()) {
      push_expired(std::move(expired));
      expired = {};
    }
    if (batch.empty()) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        free_slots_.push_back(slot);
      }
      if (!more) break;
      continue;
    }
    prepare(slot, std::move(batch));
    batch = {};
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dispatcher_done_ = true;
  }
  ready_cv_.notify_all();
}

void Feeder::prepare(int slot, std::vector<Request>&& requests) {
  auto state = std::make_shared<PreparedBatch>();
  state->sequence = sequence_++;
  state->slot = slot;
  state->requests = std::move(requests);
  state->formed_ns = steady_ns(SteadyClock::now());
  const size_t n = state->requests.size();
  state->items.resize(n);

  // Spread the GPU's share evenly over the stream of GPU-friendly JPEGs.
  auto cpu_rows = std::make_shared<std::vector<uint32_t>>();
  cpu_rows->reserve(n);
  const double share = gpu_share();
  for (uint32_t i = 0; i < n; ++i) {
    const Request& r = state->requests[i];
    if (share > 0.0) {
      credit_ = std::min(credit_ + share, 2.0);
      if (credit_ >= 1.0 && jpeg_gpu_friendly(r.data, r.size)) {
        credit_ -= 1.0;
        state->deferred.push_back(i);
        continue;
      }
    }
    cpu_rows->push_back(i);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++in_flight_;
  }
  state->prep_start_ns = steady_ns(SteadyClock::now());
  uint8_t* out = slot_data(size_t(slot));
  const size_t item_bytes = pre_->spec().item_bytes();
  pool_->submit(
      cpu_rows->size(),
      [this, state, cpu_rows, out, item_bytes](size_t k, size_t) {
        thread_local Scratch scratch;
        const uint32_t i = (*cpu_rows)[k];
        const Request& r = state->requests[i];
        pre_->run(r.data, r.size, out + i * item_bytes, scratch, state->items[i]);
      },
      [this, state] {
        state->prep_end_ns = steady_ns(SteadyClock::now());
        push_ready(std::move(*state));
      });
}

}  // namespace stoker
