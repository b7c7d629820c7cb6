#include "core/thread_pool.hpp"

#include <atomic>

#include "core/thread_name.hpp"

namespace stoker {

struct ThreadPool::Job {
  size_t n = 0;
  size_t next = 0;  // guarded by the pool's mutex
  std::atomic<size_t> remaining{0};
  std::function<void(size_t, size_t)> body;
  std::function<void()> done;
};

ThreadPool::ThreadPool(size_t threads) {
  if (threads == 0) threads = 1;
  workers_.reserve(threads);
  for (size_t w = 0; w < threads; ++w)
    workers_.emplace_back([this, w] {
      name_this_thread("stoker-pool");
      worker_loop(w);
    });
}

ThreadPool::~ThreadPool() {
  wait_idle();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::submit(size_t n, std::function<void(size_t, size_t)> body,
                        std::function<void()> done) {
  if (n == 0) {
    if (done) done();
    return;
  }
  auto job = std::make_shared<Job>();
  job->n = n;
  job->remaining = n;
  job->body = std::move(body);
  job->done = std::move(done);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
    ++in_flight_;
  }
  if (n == 1) {
    wake_.notify_one();
  } else {
    wake_.notify_all();
  }
}

void ThreadPool::wait_idle() {
  std::unique_lock<std::mutex> lock(mutex_);
  idle_.wait(lock, [this] { return in_flight_ == 0; });
}

void ThreadPool::worker_loop(size_t worker) {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stopping, and nothing left to run
    std::shared_ptr<Job> job = jobs_.front();
    const size_t index = job->next++;
    if (job->next == job->n) jobs_.pop_front();
    lock.unlock();
    // Bodies and completions report their own failures; one that escapes must not end the worker.
    try {
      job->body(index, worker);
    } catch (...) {
    }
    if (job->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      try {
        if (job->done) job->done();
      } catch (...) {
      }
      job.reset();
      lock.lock();
      if (--in_flight_ == 0) idle_.notify_all();
    } else {
      job.reset();
      lock.lock();
    }
  }
}

}  // namespace stoker
