#include "core/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

#include "core/half.hpp"
#include "core/resize.hpp"

namespace stoker {
namespace {

using Clock = std::chrono::steady_clock;

uint32_t micros_since(Clock::time_point t) {
  return uint32_t(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t).count());
}

// torchvision's CenterCrop: pad evenly when the crop is larger, else anchor at
// int(round((size - crop) / 2.0)) with Python's round-half-to-even.
int crop_offset(int size, int crop) {
  if (crop > size) return -((crop - size) / 2);
  const int d = size - crop;
  const int half = d / 2;
  return (d % 2 == 1 && half % 2 == 1) ? half + 1 : half;
}

// The stored-image rectangle that `orientation` maps onto the oriented rectangle r.
Rect stored_rect(int orientation, int width, int height, const Rect& r) {
  int ax, ay, bx, by;
  oriented_to_stored(orientation, width, height, r.x, r.y, ax, ay);
  oriented_to_stored(orientation, width, height, r.x + r.w - 1, r.y + r.h - 1, bx, by);
  return Rect{std::min(ax, bx), std::min(ay, by), std::abs(bx - ax) + 1, std::abs(by - ay) + 1};
}

// Images of one batch usually share their size, so each worker keeps the weights of its recent
// (input, output, crop) geometries.
std::shared_ptr<const AxisWeights> cached_weights(int in, int out, int begin, int end,
                                                  Interp interp, bool antialias) {
  using Key = std::array<int, 6>;
  thread_local std::vector<std::pair<Key, std::shared_ptr<const AxisWeights>>> cache;
  const Key key{in, out, begin, end, int(interp), int(antialias)};
  for (const auto& [k, w] : cache) {
    if (k == key) return w;
  }
  auto w =
      std::make_shared<const AxisWeights>(axis_weights(in, out, begin, end, interp, antialias));
  if (cache.size() >= 32) cache.erase(cache.begin());
  cache.emplace_back(key, w);
  return w;
}

}  // namespace

Preprocessor::Preprocessor(const Spec& spec) : spec_(spec) {
  spec_.validate();
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      float f = float(v) / 255.f;
      if (spec_.normalize) f = (f - spec_.mean[size_t(c)]) / spec_.std[size_t(c)];
      lut_f32_[size_t(c)][size_t(v)] = f;
      lut_u16_[size_t(c)][size_t(v)] =
          spec_.dtype == DType::kBFloat16 ? float_to_bf16(f) : float_to_fp16(f);
    }
  }
}

namespace {

// Writes one RGB row of the output item (row j) in the spec's layout and dtype.
template <typename T, typename Convert>
void emit(const uint8_t* rgb, int j, int height, int width, Layout layout, T* out, Convert conv) {
  if (layout == Layout::kNHWC) {
    T* d = out + size_t(j) * size_t(width) * 3;
    for (int i = 0; i < width * 3; ++i) d[i] = conv(i % 3, rgb[i]);
    return;
  }
  const size_t plane = size_t(height) * size_t(width);
  for (int c = 0; c < 3; ++c) {
    T* d = out + size_t(c) * plane + size_t(j) * size_t(width);
    for (int x = 0; x < width; ++x) d[x] = conv(c, rgb[3 * x + c]);
  }
}

}  // namespace

void Preprocessor::emit_row(const uint8_t* rgb, int j, void* out) const {
  const int h = spec_.out_height(), w = spec_.out_width();
  switch (spec_.dtype) {
    case DType::kUInt8:
      emit(rgb, j, h, w, spec_.layout, static_cast<uint8_t*>(out),
           [](int, uint8_t v) { return v; });
      break;
    case DType::kFloat32:
      emit(rgb, j, h, w, spec_.layout, static_cast<float*>(out),
           [this](int c, uint8_t v) { return lut_f32_[size_t(c)][v]; });
      break;
    default:
      emit(rgb, j, h, w, spec_.layout, static_cast<uint16_t*>(out),
           [this](int c, uint8_t v) { return lut_u16_[size_t(c)][v]; });
      break;
  }
}

void Preprocessor::fill_padding(void* out) const {
  const std::vector<uint8_t> zeros(size_t(spec_.out_width()) * 3, 0);
  for (int j = 0; j < spec_.out_height(); ++j) emit_row(zeros.data(), j, out);
}

void Preprocessor::run(const uint8_t* data, size_t size, void* out, Scratch& scratch,
                       ItemResult& result) const {
  result = ItemResult{};
  try {
    process(data, size, out, scratch, result);
    return;
  } catch (const ImageError& e) {
    result.status = e.status();
    result.message = e.what();
  } catch (const std::bad_alloc&) {
    result.status = Status::kInternal;
    result.message = "out of memory";
  } catch (const std::exception& e) {
    result.status = Status::kInternal;
    result.message = e.what();
  }
  fill_padding(out);
}

void Preprocessor::process(const uint8_t* data, size_t size, void* out, Scratch& scratch,
                           ItemResult& result) const {
  const Clock::time_point t0 = Clock::now();
  const ImageInfo info = read_info(data, size, spec_.max_pixels);
  const int ow = info.oriented_width(), oh = info.oriented_height();
  const auto [rw, rh] = resize_target(spec_, ow, oh);
  const int out_w = spec_.out_width(), out_h = spec_.out_height();
  const int off_x = spec_.crop ? crop_offset(rw, out_w) : 0;
  const int off_y = spec_.crop ? crop_offset(rh, out_h) : 0;

  int scale = 8;
  if (info.format == ImageFormat::kJpeg && spec_.reduce_gap >= 1.0 &&
      spec_.resize_mode != ResizeMode::kNone) {
    // Only the halving scales: libjpeg-turbo has SIMD inverse DCTs for them, and the odd scales
    // (3/8, 5/8, ...) are both slower and less accurate than decoding at the next halving.
    for (int k : {1, 2, 4}) {
      if (scaled_size(ow, k) >= spec_.reduce_gap * rw &&
          scaled_size(oh, k) >= spec_.reduce_gap * rh) {
        scale = k;
        break;
      }
    }
  }
  const int sw = scaled_size(ow, scale), sh = scaled_size(oh, scale);
  const int bx = std::clamp(off_x, 0, rw), ex = std::clamp(off_x + out_w, 0, rw);
  const int by = std::clamp(off_y, 0, rh), ey = std::clamp(off_y + out_h, 0, rh);
  const auto wx_ptr = cached_weights(sw, rw, bx, ex, spec_.interp, spec_.antialias);
  const auto wy_ptr = cached_weights(sh, rh, by, ey, spec_.interp, spec_.antialias);
  const AxisWeights& wx = *wx_ptr;
  const AxisWeights& wy = *wy_ptr;

  // Decode only the oriented rectangle the kept outputs read.
  const Rect need{wx.in_lo, wy.in_lo, wx.in_hi - wx.in_lo, wy.in_hi - wy.in_lo};
  const int stored_w = scaled_size(info.width, scale), stored_h = scaled_size(info.height, scale);
  PixelView view =
      decode_region(data, size, info, scale,
                    stored_rect(info.orientation, stored_w, stored_h, need), scratch.decoded);
  if (info.orientation != 1) {
    uint8_t* dst = scratch.oriented.reserve(size_t(need.w) * size_t(need.h) * 4 + 64);
    for (int y = 0; y < need.h; ++y) {
      for (int x = 0; x < need.w; ++x) {
        int sx, sy;
        oriented_to_stored(info.orientation, stored_w, stored_h, need.x + x, need.y + y, sx, sy);
        std::memcpy(
            dst + (size_t(y) * size_t(need.w) + size_t(x)) * 4,
            view.data + size_t(sy - view.origin_y) * view.stride + size_t(sx - view.origin_x) * 4,
            4);
      }
    }
    view = PixelView{dst, need.w, need.h, size_t(need.w) * 4, need.x, need.y};
  }
  result.decode_us = micros_since(t0);
  const Clock::time_point t1 = Clock::now();

  const int cols = ex - bx;
  const size_t row_bytes = size_t(cols) * 3;
  uint8_t* rows = scratch.rows.reserve(size_t(need.h) * row_bytes + 64);
  resample_rows(view.data + size_t(need.y - view.origin_y) * view.stride, view.stride,
                view.origin_x, need.h, wx, rows, row_bytes);

  scratch.acc.resize(row_bytes);
  scratch.line.assign(size_t(out_w) * 3, 0);
  std::vector<const uint8_t*> taps(size_t(wy.taps));
  for (int j = 0; j < out_h; ++j) {
    const int r = off_y + j;
    uint8_t* line = scratch.line.data();
    if (r < by || r >= ey) {
      std::memset(line, 0, size_t(out_w) * 3);
    } else {
      const size_t i = size_t(r - by);
      const int first = wy.first[i];
      uint8_t* kept = line + size_t(bx - off_x) * 3;
      if (wy.taps == 1) {
        std::memcpy(kept, rows + size_t(first - need.y) * row_bytes, row_bytes);
      } else {
        for (int t = 0; t < wy.taps; ++t)
          taps[size_t(t)] = rows + size_t(first + t - need.y) * row_bytes;
        resample_column_row(taps.data(), wy.weights.data() + i * size_t(wy.taps), wy.taps,
                            wy.precision, int(row_bytes), kept, scratch.acc.data());
      }
      std::memset(line, 0, size_t(bx - off_x) * 3);
      std::memset(kept + row_bytes, 0, size_t(off_x + out_w - ex) * 3);
    }
    emit_row(line, j, out);
  }
  result.resize_us = micros_since(t1);
}

}  // namespace stoker
