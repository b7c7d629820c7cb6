// A batch of encoded images preprocessed on the thread pool into one contiguous output.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/pipeline.hpp"
#include "core/thread_pool.hpp"

namespace stoker {

struct ByteSpan {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

struct BatchResult {
  std::vector<ItemResult> items;
  size_t failed() const;
};

// Preprocesses items[i] into out + i * spec.item_bytes(). `done` runs once after every item is
// written, on the pool worker that finished last (on the caller's thread for an empty batch); the
// caller keeps the inputs and the output alive until then.
void run_batch_async(ThreadPool& pool, std::shared_ptr<const Preprocessor> pre,
                     std::vector<ByteSpan> items, uint8_t* out,
                     std::function<void(BatchResult&&)> done);

// The blocking form.
BatchResult run_batch(ThreadPool& pool, std::shared_ptr<const Preprocessor> pre,
                      const std::vector<ByteSpan>& items, uint8_t* out);

}  // namespace stoker
