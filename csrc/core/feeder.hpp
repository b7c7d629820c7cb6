// The engine's native front half. Requests enter a Batcher; a dispatcher thread takes each batch,
// preprocesses it on the pool into a free slot of a fixed ring of staging buffers, and queues the
// prepared batch for the consumer (the engine's device loop), which releases the slot once its
// contents have been copied out. A share of the JPEGs can be left undecoded for a GPU decoder.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/arena.hpp"
#include "core/batcher.hpp"
#include "core/pipeline.hpp"
#include "core/thread_pool.hpp"

namespace stoker {

struct FeederConfig {
  BatcherConfig batcher;
  size_t slots = 3;  // staging batches; two let preparation overlap the consumer's copy
  bool pinned = false;
};

// Nanoseconds on the steady clock, the clock Python's time.monotonic_ns() reads on Linux.
int64_t steady_ns(SteadyClock::time_point t);

struct PreparedBatch {
  uint64_t sequence = 0;
  int slot = -1;
  std::vector<Request> requests;  // row i of the slot belongs to requests[i]
  std::vector<ItemResult> items;
  std::vector<uint32_t> deferred;  // rows left for the GPU decoder, untouched in the slot
  int64_t formed_ns = 0;           // the batcher handed the batch out
  int64_t prep_start_ns = 0;
  int64_t prep_end_ns = 0;
};

class Feeder {
 public:
  // Throws std::invalid_argument on a bad configuration, std::bad_alloc when staging fails.
  Feeder(FeederConfig config, std::shared_ptr<const Preprocessor> pre,
         std::shared_ptr<ThreadPool> pool, HostArena& arena);
  ~Feeder();
  Feeder(const Feeder&) = delete;
  Feeder& operator=(const Feeder&) = delete;

  Admission submit(uint64_t id, Priority priority, SteadyClock::time_point deadline,
                   const uint8_t* data, size_t size);
  bool cancel(uint64_t id) { return batcher_.cancel(id); }
  // Blocks until a prepared batch is ready; false once closed and drained.
  bool next(PreparedBatch& out);
  // Blocks until requests expire in the queue (they are never batched); false once closed. Kept
  // apart from next() so that expirations are answered while the consumer is busy.
  bool next_expired(std::vector<Request>& out);
  void release(int slot);
  // Stops admissions; requests already queued are still prepared and handed out. Once next()
  // has said there is nothing more, the feeder no longer holds its thread pool.
  void close();
  // The fraction (0..1) of GPU-friendly JPEGs to leave for the GPU decoder.
  void set_gpu_share(double share);
  double gpu_share() const { return gpu_share_.load(std::memory_order_relaxed); }

  size_t waiting() const { return batcher_.waiting(); }
  size_t slots() const { return blocks_.size(); }
  uint8_t* slot_data(size_t slot) const { return static_cast<uint8_t*>(blocks_[slot].ptr); }
  bool pinned() const;
  const Preprocessor& preprocessor() const { return *pre_; }
  const BatcherConfig& batcher_config() const { return batcher_.config(); }

 private:
  void dispatch_loop();
  void prepare(int slot, std::vector<Request>&& batch);
  void push_ready(PreparedBatch&& batch);
  void push_expired(std::vector<Request>&& expired);
  // Waits for a free slot, answering expirations meanwhile; -1 when aborting.
  int acquire_slot();

  Batcher batcher_;
  std::shared_ptr<const Preprocessor> pre_;
  std::shared_ptr<ThreadPool> pool_;
  HostArena& arena_;
  std::vector<HostBlock> blocks_;
  std::atomic<double> gpu_share_{0.0};
  double credit_ = 0.0;  // dispatcher thread only
  uint64_t sequence_ = 0;

  std::mutex mutex_;
  std::condition_variable free_cv_;
  std::condition_variable ready_cv_;
  std::vector<int> free_slots_;
  std::vector<bool> handed_out_;  // slots the consumer holds (given by next(), not yet released)
  std::deque<PreparedBatch> ready_;
  std::vector<Request> expired_;
  size_t in_flight_ = 0;  // batches being preprocessed
  bool dispatcher_done_ = false;
  bool aborting_ = false;
  uint64_t deadline_epoch_ = 0;  // bumped by each submission that carries a deadline
  std::thread dispatcher_;
};

}  // namespace stoker
