// What one preprocessing call produces: geometry, interpolation, normalization and output format.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace stoker {

enum class ResizeMode : uint8_t { kNone, kShorterSide, kExact };
enum class Interp : uint8_t { kNearest, kBilinear, kBicubic };
enum class Layout : uint8_t { kNCHW, kNHWC };
enum class DType : uint8_t { kUInt8, kFloat32, kFloat16, kBFloat16 };

inline constexpr int64_t kDefaultMaxPixels = 50'000'000;

struct Spec {
  ResizeMode resize_mode = ResizeMode::kShorterSide;
  int resize_h = 256;  // the shorter side's length for kShorterSide
  int resize_w = 256;
  bool crop = true;
  int crop_h = 224;
  int crop_w = 224;
  Interp interp = Interp::kBilinear;
  bool antialias = true;
  bool normalize = false;  // when false, floats are x/255 and mean/std are unused
  std::array<float, 3> mean{0.f, 0.f, 0.f};
  std::array<float, 3> std{1.f, 1.f, 1.f};
  Layout layout = Layout::kNCHW;
  DType dtype = DType::kFloat32;
  // JPEG only: decode at a reduced DCT scale while the decoded image stays at least this many
  // times the resize target in both dimensions. Zero or less decodes at full size.
  double reduce_gap = 0.0;
  int64_t max_pixels = kDefaultMaxPixels;

  // Throws std::invalid_argument describing the first inconsistent field.
  void validate() const;
  // Every item of a batch has this height and width.
  int out_height() const;
  int out_width() const;
  size_t dtype_size() const;
  size_t item_bytes() const;
};

// Target size of the resize step for an (oriented) image of width x height; {width, height}.
std::array<int, 2> resize_target(const Spec& spec, int width, int height);

}  // namespace stoker
