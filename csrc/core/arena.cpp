#include "core/arena.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <new>
#include <stdexcept>

namespace stoker {
namespace {

constexpr size_t kPage = 4096;

size_t round_up(size_t bytes) { return (bytes + kPage - 1) / kPage * kPage; }

}  // namespace

HostArena::HostArena(size_t cache_limit_bytes) : cache_limit_(cache_limit_bytes) {}

HostArena::~HostArena() { trim(); }

bool HostArena::enable_pinning(const std::string& library, std::string& error) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (cudart_ != nullptr) return true;
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    error = why != nullptr ? why : "dlopen failed";
    return false;
  }
  auto reg = reinterpret_cast<int (*)(void*, size_t, unsigned)>(dlsym(handle, "cudaHostRegister"));
  auto unreg = reinterpret_cast<int (*)(void*)>(dlsym(handle, "cudaHostUnregister"));
  if (reg == nullptr || unreg == nullptr) {
    error = library + " has no cudaHostRegister/cudaHostUnregister";
    dlclose(handle);
    return false;
  }
  cudart_ = handle;
  host_register_ = reg;
  host_unregister_ = unreg;
  return true;
}

bool HostArena::pinning_enabled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cudart_ != nullptr;
}

HostBlock HostArena::acquire(size_t bytes, bool pinned) {
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  auto& cache = cache_[pinned ? 1 : 0];
  // Best fit, but never hand out a block more than twice the request.
  auto it = cache.lower_bound(size);
  if (it != cache.end() && it->first <= 2 * size) {
    HostBlock block = it->second;
    cache.erase(it);
    stats_.cached_bytes -= block.size;
    stats_.live_bytes += block.size;
    ++stats_.hits;
    return block;
  }
  if (pinned && host_register_ == nullptr) {
    throw std::runtime_error("pinned memory requested but the CUDA runtime is not loaded");
  }
  void* ptr = std::aligned_alloc(kPage, size);
  if (ptr == nullptr) throw std::bad_alloc();
  if (pinned) {
    const int code = host_register_(ptr, size, 0);
    if (code != 0) {
      std::free(ptr);
      throw std::runtime_error("cudaHostRegister failed with error " + std::to_string(code));
    }
  }
  stats_.live_bytes += size;
  ++stats_.misses;
  return HostBlock{ptr, size, pinned};
}

void HostArena::release(HostBlock block) {
  if (block.ptr == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.live_bytes -= block.size;
    if (stats_.cached_bytes + block.size <= cache_limit_) {
      cache_[block.pinned ? 1 : 0].emplace(block.size, block);
      stats_.cached_bytes += block.size;
      return;
    }
  }
  free_block(block);
}

void HostArena::free_block(const HostBlock& block) {
  if (block.pinned && host_unregister_ != nullptr) host_unregister_(block.ptr);
  std::free(block.ptr);
}

ArenaStats HostArena::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void HostArena::trim() {
  std::multimap<size_t, HostBlock> cached[2];
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cached[0].swap(cache_[0]);
    cached[1].swap(cache_[1]);
    stats_.cached_bytes = 0;
  }
  for (auto& cache : cached) {
    for (auto& [size, block] : cache) free_block(block);
  }
}

}  // namespace stoker
