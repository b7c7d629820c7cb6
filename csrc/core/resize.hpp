// Separable resampling that matches torch.nn.functional.interpolate on uint8 images (the kernels,
// the support, the int16 fixed-point weights and the horizontal-then-vertical order), computed only
// for the output rows and columns a crop keeps.
#pragma once

#include <cstdint>
#include <vector>

#include "core/spec.hpp"

namespace stoker {

// Weights of one axis: output index i (within [out_begin, out_end)) reads input samples
// [first[i], first[i] + taps) with int16 weights scaled by 2^precision. Rows are padded to
// `taps` with zero weights, and `first` is clamped so a padded row stays inside the input.
struct AxisWeights {
  int out_begin = 0;
  int out_end = 0;
  int taps = 0;
  int precision = 0;
  std::vector<int32_t> first;
  std::vector<int16_t> weights;  // (out_end - out_begin) * taps
  bool identity = false;         // output sample i is input sample i + offset
  int in_lo = 0;                 // the input range [in_lo, in_hi) any output reads
  int in_hi = 0;
};

// Weights for resampling `in_size` samples to `out_size`, for outputs [out_begin, out_end).
AxisWeights axis_weights(int in_size, int out_size, int out_begin, int out_end, Interp interp,
                         bool antialias);

// Horizontal pass: rows [row_begin, row_end) of an RGBX image (origin-relative coordinates given by
// `x_origin`) into packed RGB rows of (w.out_end - w.out_begin) pixels.
void resample_rows(const uint8_t* src, size_t src_stride, int x_origin, int row_count,
                   const AxisWeights& w, uint8_t* dst, size_t dst_stride);

// Vertical pass for one output row: combines `taps` packed RGB rows into `count` bytes
// (pixels x 3); `acc` holds `count` int32 of scratch.
void resample_column_row(const uint8_t* const* rows, const int16_t* weights, int taps,
                         int precision, int count, uint8_t* dst, int32_t* acc);

}  // namespace stoker
