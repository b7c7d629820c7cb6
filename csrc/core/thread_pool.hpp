// A fixed set of worker threads that run index ranges of batch jobs with no Python involved.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace stoker {

class ThreadPool {
 public:
  // `niceness` lowers the workers' CPU priority by that many nice levels below the constructing
  // thread's (0..19), so that threads which must not wait for a core (those feeding a GPU) win
  // it from batch work. Throws std::invalid_argument outside that range and std::system_error
  // when a worker cannot change its priority.
  explicit ThreadPool(size_t threads, int niceness = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size(); }
  int niceness() const { return niceness_; }
  // Runs body(i, worker) for every i in [0, n) on the workers, then done() on the worker that
  // finished last. Returns at once.
  void submit(size_t n, std::function<void(size_t, size_t)> body, std::function<void()> done);
  // Blocks until every submitted job has finished.
  void wait_idle();

 private:
  struct Job;
  void worker_loop(size_t worker);

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<std::shared_ptr<Job>> jobs_;
  size_t in_flight_ = 0;
  bool stopping_ = false;
  int niceness_ = 0;
  std::vector<std::thread> workers_;
};

}  // namespace stoker
