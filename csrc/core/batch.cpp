#include "core/batch.hpp"

#include <future>

namespace stoker {

size_t BatchResult::failed() const {
  size_t n = 0;
  for (const ItemResult& r : items) n += r.status != Status::kOk;
  return n;
}

void run_batch_async(ThreadPool& pool, std::shared_ptr<const Preprocessor> pre,
                     std::vector<ByteSpan> items, uint8_t* out,
                     std::function<void(BatchResult&&)> done) {
  struct State {
    std::shared_ptr<const Preprocessor> pre;
    std::vector<ByteSpan> items;
    uint8_t* out;
    BatchResult result;
    std::function<void(BatchResult&&)> done;
  };
  auto state = std::make_shared<State>();
  state->pre = std::move(pre);
  state->items = std::move(items);
  state->out = out;
  state->result.items.resize(state->items.size());
  state->done = std::move(done);
  const size_t n = state->items.size();
  const size_t item_bytes = state->pre->spec().item_bytes();
  pool.submit(
      n,
      [state, item_bytes](size_t i, size_t) {
        // Each worker keeps its decode buffers across items and calls.
        thread_local Scratch scratch;
        const ByteSpan& in = state->items[i];
        state->pre->run(in.data, in.size, state->out + i * item_bytes, scratch,
                        state->result.items[i]);
      },
      [state] { state->done(std::move(state->result)); });
}

BatchResult run_batch(ThreadPool& pool, std::shared_ptr<const Preprocessor> pre,
                      const std::vector<ByteSpan>& items, uint8_t* out) {
  std::promise<BatchResult> promise;
  std::future<BatchResult> future = promise.get_future();
  run_batch_async(pool, std::move(pre), items, out,
                  [&promise](BatchResult&& r) { promise.set_value(std::move(r)); });
  return future.get();
}

}  // namespace stoker
