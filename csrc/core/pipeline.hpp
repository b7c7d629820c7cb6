// One image through decode, resize, crop and normalization into its slot of a batch.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/image.hpp"
#include "core/spec.hpp"
#include "core/status.hpp"

namespace stoker {

struct ItemResult {
  Status status = Status::kOk;
  std::string message;
  uint32_t decode_us = 0;
  uint32_t resize_us = 0;
};

// Reusable per-thread buffers: they grow to the largest image seen and are then reused.
struct Scratch {
  Buffer decoded;
  Buffer oriented;
  Buffer rows;
  std::vector<int32_t> acc;
  std::vector<uint8_t> line;
};

class Preprocessor {
 public:
  explicit Preprocessor(const Spec& spec);  // throws std::invalid_argument
  const Spec& spec() const { return spec_; }
  // Writes item `out` (spec().item_bytes() bytes); never throws: failures land in `result` and
  // the item's slot is filled with the value a zero pixel normalizes to.
  void run(const uint8_t* data, size_t size, void* out, Scratch& scratch, ItemResult& result) const;

 private:
  void process(const uint8_t* data, size_t size, void* out, Scratch& scratch,
               ItemResult& result) const;
  // Writes RGB row j of the output item in the spec's layout and dtype.
  void emit_row(const uint8_t* rgb, int j, void* out) const;
  void fill_padding(void* out) const;

  Spec spec_;
  // Per channel: the output value for each uint8 level (float32 bits, or fp16/bf16 in the low 16).
  std::array<std::array<float, 256>, 3> lut_f32_{};
  std::array<std::array<uint16_t, 256>, 3> lut_u16_{};
};

}  // namespace stoker
