// Latency histograms cheap enough to stay on in production: log-linear buckets (eight per power
// of two, so any value is within 12.5% of its bucket's edges) over microseconds, recorded with
// relaxed atomics from any thread and read as a consistent-enough snapshot.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace stoker {

class Histogram {
 public:
  static constexpr int kSubBits = 3;
  static constexpr size_t kSub = size_t{1} << kSubBits;
  static constexpr int kMaxExponent = 40;  // 2^40 µs is about 12 days
  static constexpr size_t kBuckets = kSub + (kMaxExponent - kSubBits + 1) * kSub;

  static size_t bucket_of(uint64_t value);
  // The largest value that lands in `bucket`.
  static uint64_t upper_bound(size_t bucket);

  void record(uint64_t value, uint64_t n = 1);
  void reset();

  struct Snapshot {
    std::vector<uint64_t> counts;  // kBuckets entries
    uint64_t count = 0;
    uint64_t sum = 0;
    uint64_t max = 0;
  };
  Snapshot snapshot() const;

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_{0};
  std::atomic<uint64_t> max_{0};
};

}  // namespace stoker
