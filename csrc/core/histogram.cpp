#include "core/histogram.hpp"

#include <bit>

namespace stoker {

size_t Histogram::bucket_of(uint64_t value) {
  if (value < kSub) return size_t(value);
  const int exponent = std::bit_width(value) - 1;
  if (exponent > kMaxExponent) return kBuckets - 1;
  const size_t mantissa = size_t(value >> (exponent - kSubBits)) & (kSub - 1);
  return kSub + size_t(exponent - kSubBits) * kSub + mantissa;
}

uint64_t Histogram::upper_bound(size_t bucket) {
  if (bucket < kSub) return bucket;
  const int exponent = int((bucket - kSub) / kSub) + kSubBits;
  const uint64_t mantissa = (bucket - kSub) % kSub;
  const int shift = exponent - kSubBits;
  return ((kSub + mantissa) << shift) + ((uint64_t{1} << shift) - 1);
}

void Histogram::record(uint64_t value, uint64_t n) {
  counts_[bucket_of(value)].fetch_add(n, std::memory_order_relaxed);
  count_.fetch_add(n, std::memory_order_relaxed);
  sum_.fetch_add(value * n, std::memory_order_relaxed);
  uint64_t seen = max_.load(std::memory_order_relaxed);
  while (value > seen && !max_.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
  }
}

void Histogram::reset() {
  for (auto& c : counts_) c.store(0, std::memory_order_relaxed);
  count_.store(0, std::memory_order_relaxed);
  sum_.store(0, std::memory_order_relaxed);
  max_.store(0, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.counts.resize(kBuckets);
  // The total is the sum of the buckets read, so quantiles never point past the data.
  for (size_t i = 0; i < kBuckets; ++i) {
    s.counts[i] = counts_[i].load(std::memory_order_relaxed);
    s.count += s.counts[i];
  }
  s.sum = sum_.load(std::memory_order_relaxed);
  s.max = max_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace stoker
