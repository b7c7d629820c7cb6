#include "core/spec.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "core/status.hpp"

namespace stoker {

const char* status_name(Status s) {
  switch (s) {
    case Status::kOk:
      return "ok";
    case Status::kEmpty:
      return "empty";
    case Status::kUnsupported:
      return "unsupported";
    case Status::kCorrupt:
      return "corrupt";
    case Status::kTooLarge:
      return "too_large";
    case Status::kInternal:
      return "internal";
  }
  return "unknown";
}

namespace {

// Output sides are bounded so that every byte offset of a batch fits comfortably in 64 bits and a
// typo (an extra zero) fails loudly instead of allocating gigabytes.
constexpr int kMaxSide = 32768;

void check_side(int value, const char* name) {
  if (value < 1 || value > kMaxSide) {
    throw std::invalid_argument(std::string(name) + " must be between 1 and " +
                                std::to_string(kMaxSide) + ", got " + std::to_string(value));
  }
}

}  // namespace

void Spec::validate() const {
  if (resize_mode == ResizeMode::kShorterSide) {
    check_side(resize_h, "size");
  } else if (resize_mode == ResizeMode::kExact) {
    check_side(resize_h, "size height");
    check_side(resize_w, "size width");
  }
  if (crop) {
    check_side(crop_h, "crop height");
    check_side(crop_w, "crop width");
  } else if (resize_mode != ResizeMode::kExact) {
    throw std::invalid_argument(
        "a batch needs one output size: give a crop or an exact (height, width) size");
  }
  if (normalize) {
    if (dtype == DType::kUInt8) {
      throw std::invalid_argument(
          "uint8 output cannot be normalized: drop mean/std or use a float dtype");
    }
    for (int c = 0; c < 3; ++c) {
      if (!std::isfinite(mean[c]) || !std::isfinite(std[c]) || std[c] == 0.f) {
        throw std::invalid_argument("mean must be finite and std finite and nonzero");
      }
    }
  }
  if (!(reduce_gap <= 0.0 || (std::isfinite(reduce_gap) && reduce_gap >= 1.0))) {
    throw std::invalid_argument("reduce_gap must be at least 1 (or off)");
  }
  if (max_pixels < 1) {
    throw std::invalid_argument("max_pixels must be positive");
  }
}

int Spec::out_height() const { return crop ? crop_h : resize_h; }
int Spec::out_width() const { return crop ? crop_w : resize_w; }

size_t Spec::dtype_size() const {
  switch (dtype) {
    case DType::kUInt8:
      return 1;
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
  }
  return 0;
}

size_t Spec::item_bytes() const {
  return size_t(out_height()) * size_t(out_width()) * 3 * dtype_size();
}

std::array<int, 2> resize_target(const Spec& spec, int width, int height) {
  switch (spec.resize_mode) {
    case ResizeMode::kNone:
      return {width, height};
    case ResizeMode::kExact:
      return {spec.resize_w, spec.resize_h};
    case ResizeMode::kShorterSide:
      break;
  }
  // torchvision: the longer side is int(size * long / short), a true division then truncation.
  const int64_t size = spec.resize_h;
  if (width <= height) {
    return {int(size), int(double(size * height) / double(width))};
  }
  return {int(double(size * width) / double(height)), int(size)};
}

}  // namespace stoker
