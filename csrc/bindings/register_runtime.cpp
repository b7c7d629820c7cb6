#include <nanobind/stl/string.h>
#include <sched.h>

#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

#include "bindings/bindings.hpp"

namespace stoker::bindings {
namespace {

std::mutex pool_mutex;
std::shared_ptr<ThreadPool> current_pool;

size_t default_threads() {
  if (const char* env = std::getenv("STOKER_NUM_THREADS"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end == '\0' && n > 0) return size_t(n);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return size_t(CPU_COUNT(&set));
  return 1;
}

}  // namespace

std::shared_ptr<ThreadPool> pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (!current_pool) current_pool = std::make_shared<ThreadPool>(default_threads());
  return current_pool;
}

namespace {

void replace_pool(size_t threads, int niceness) {
  // Built before the old one goes: a refused niceness leaves the pool as it was.
  auto fresh = std::make_shared<ThreadPool>(threads, niceness);
  std::shared_ptr<ThreadPool> old;
  {
    std::lock_guard<std::mutex> lock(pool_mutex);
    old = std::move(current_pool);
    current_pool = std::move(fresh);
  }
  old.reset();  // waits for the old pool's batches, then joins its threads
}

}  // namespace

HostArena& arena() {
  // Never destroyed: pinned blocks must not be unregistered after the CUDA runtime shut down.
  static HostArena* instance = new HostArena();
  return *instance;
}

void register_runtime(nb::module_& m) {
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw std::invalid_argument("the number of threads must be at least 1");
        replace_pool(size_t(n), pool()->niceness());
      },
      nb::arg("n"), nb::call_guard<nb::gil_scoped_release>(),
      "Resize the native worker pool (waits for running batches).");
  m.def("get_num_threads", [] { return pool()->size(); }, "Size of the native worker pool.");
  m.def(
      "set_thread_niceness", [](int niceness) { replace_pool(pool()->size(), niceness); },
      nb::arg("niceness"), nb::call_guard<nb::gil_scoped_release>(),
      "Run the native worker pool `niceness` nice levels (0..19) below the calling thread, so\n"
      "that Python threads feeding a GPU win a core from batch work (waits for running "
      "batches).");
  m.def(
      "get_thread_niceness", [] { return pool()->niceness(); },
      "How many nice levels the native worker pool runs below the thread that made it.");
  m.def(
      "wait_idle", [] { pool()->wait_idle(); }, nb::call_guard<nb::gil_scoped_release>(),
      "Block until no batch is running.");
  m.def(
      "enable_pinning",
      [](const std::string& library) {
        std::string error;
        if (!arena().enable_pinning(library, error)) throw std::runtime_error(error);
      },
      nb::arg("library"), "Load the CUDA runtime at `library` to page-lock output buffers.");
  m.def(
      "pinning_enabled", [] { return arena().pinning_enabled(); },
      "Whether output buffers can be page-locked.");
  m.def(
      "arena_stats",
      [] {
        const ArenaStats s = arena().stats();
        nb::dict d;
        d["cached_bytes"] = s.cached_bytes;
        d["live_bytes"] = s.live_bytes;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        return d;
      },
      "Counters of the pooled output arena.");
  m.def("arena_trim", [] { arena().trim(); }, "Free every cached output buffer.");
}

}  // namespace stoker::bindings
