#include "core/thread_pool.hpp"

#include <sys/resource.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>

#include "core/thread_name.hpp"

namespace stoker {

struct ThreadPool::Job {
  size_t n = 0;
  size_t next = 0;  // guarded by the pool's mutex
  std::atomic<size_t> remaining{0};
  std::function<void(size_t, size_t)> body;
  std::function<void()> done;
};

namespace {

// On Linux the nice value belongs to the thread, and PRIO_PROCESS with id 0 names the caller.
int lower_this_thread(int niceness) {
  errno = 0;
  const int now = getpriority(PRIO_PROCESS, 0);
  if (now == -1 && errno != 0) return errno;
  return setpriority(PRIO_PROCESS, 0, now + niceness) == 0 ? 0 : errno;
}

}  // namespace

ThreadPool::ThreadPool(size_t threads, int niceness) : niceness_(niceness) {
  if (niceness < 0 || niceness > 19) {
    throw std::invalid_argument("niceness must be in 0..19, got " + std::to_string(niceness));
  }
  if (threads == 0) threads = 1;
  // Each worker reports whether its priority took before the pool is handed out. The workers
  // share the report's state, so a late one never touches this frame after it returned.
  struct Startup {
    std::mutex mutex;
    std::condition_variable cv;
    size_t started = 0;
    int failure = 0;
  };
  auto startup = std::make_shared<Startup>();
  workers_.reserve(threads);
  for (size_t w = 0; w < threads; ++w)
    workers_.emplace_back([this, w, niceness, startup] {
      name_this_thread("stoker-pool");
      const int error = niceness > 0 ? lower_this_thread(niceness) : 0;
      {
        std::lock_guard<std::mutex> lock(startup->mutex);
        ++startup->started;
        if (error != 0) startup->failure = error;
      }
      startup->cv.notify_one();
      worker_loop(w);
    });
  std::unique_lock<std::mutex> lock(startup->mutex);
  startup->cv.wait(lock, [&] { return startup->started == threads; });
  if (const int failure = startup->failure; failure != 0) {
    lock.unlock();
    {
      std::lock_guard<std::mutex> pool_lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
    throw std::system_error(failure, std::generic_category(), "lowering the workers' priority");
  }
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
