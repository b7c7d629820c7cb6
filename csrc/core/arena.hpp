// Host buffers for batch outputs, pooled across calls and optionally page-locked through the CUDA
// runtime that the process already loaded (found with dlopen at run time; nothing links CUDA).
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <string>

namespace stoker {

struct HostBlock {
  void* ptr = nullptr;
  size_t size = 0;
  bool pinned = false;
};

struct ArenaStats {
  size_t cached_bytes = 0;
  size_t live_bytes = 0;
  size_t hits = 0;
  size_t misses = 0;
};

class HostArena {
 public:
  explicit HostArena(size_t cache_limit_bytes = size_t{2} << 30);
  ~HostArena();
  // Loads the CUDA runtime at `library` (dlopen); returns false with a reason in `error`.
  bool enable_pinning(const std::string& library, std::string& error);
  bool pinning_enabled() const;
  HostBlock acquire(size_t bytes, bool pinned);  // throws std::bad_alloc / std::runtime_error
  void release(HostBlock block);
  ArenaStats stats() const;
  void trim();  // frees every cached block

 private:
  void free_block(const HostBlock& block);

  mutable std::mutex mutex_;
  std::multimap<size_t, HostBlock> cache_[2];  // [pinned]
  size_t cache_limit_;
  ArenaStats stats_;
  void* cudart_ = nullptr;
  int (*host_register_)(void*, size_t, unsigned) = nullptr;
  int (*host_unregister_)(void*) = nullptr;
};

}  // namespace stoker
