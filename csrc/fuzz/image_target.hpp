// The part of the image fuzz targets that every format shares. An input is kParamBytes of
// parameters (the preprocessing spec, a DCT scale and a region) followed by the encoded image, so
// one input exercises both the decoders and the geometry the Preprocessor derives from them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "check.hpp"
#include "core/image.hpp"
#include "core/pipeline.hpp"
#include "core/spec.hpp"
#include "core/status.hpp"

namespace stoker::fuzz {

inline constexpr size_t kParamBytes = 8;
// Small enough that a hostile header cannot make one execution take seconds or gigabytes, large
// enough for every seed.
inline constexpr int64_t kMaxPixels = int64_t{1} << 20;

struct ImageInput {
  const uint8_t* params;
  const uint8_t* image;
  size_t size;
  // The DCT scale (1..8) of the reduced JPEG decode.
  int scale() const { return 1 + (params[5] >> 5); }
};

// Every field is taken from the parameters, then nudged to a spec validate() accepts: the
// Preprocessor must handle each valid spec, and an invalid one only tests the constructor's throw.
inline Spec spec_from(const uint8_t* p) {
  Spec s;
  s.resize_mode = ResizeMode(p[0] % 3);
  s.interp = Interp((p[0] >> 2) % 3);
  s.antialias = (p[0] & 0x10) != 0;
  s.crop = (p[0] & 0x20) != 0 || s.resize_mode != ResizeMode::kExact;
  s.dtype = DType(p[0] >> 6);
  s.resize_h = 1 + p[1];
  s.resize_w = 1 + p[2];
  s.crop_h = 1 + p[3];
  s.crop_w = 1 + p[4];
  s.layout = Layout(p[5] & 1);
  s.normalize = (p[5] & 2) != 0 && s.dtype != DType::kUInt8;
  s.mean = {0.485f, 0.456f, 0.406f};
  s.std = {0.229f, 0.224f, 0.225f};
  constexpr double kGaps[8] = {0.0, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 0.0};
  s.reduce_gap = kGaps[(p[5] >> 2) & 7];
  s.max_pixels = kMaxPixels;
  return s;
}

// A rectangle inside a width x height image, from two parameter bytes.
inline Rect region_from(const uint8_t* p, int width, int height) {
  Rect r;
  r.x = width * (p[6] & 15) / 16;
  r.y = height * (p[6] >> 4) / 16;
  r.w = std::max(1, (width - r.x) * ((p[7] & 15) + 1) / 16);
  r.h = std::max(1, (height - r.y) * ((p[7] >> 4) + 1) / 16);
  return r;
}

// Reads every byte of the view so that ASan reports a view reaching outside its buffer.
inline uint32_t touch(const PixelView& v) {
  uint32_t sum = 0;
  for (int y = 0; y < v.height; ++y) {
    const uint8_t* row = v.data + size_t(y) * v.stride;
    for (size_t i = 0; i < size_t(v.width) * 4; ++i) sum += row[i];
  }
  return sum;
}

inline void check_covers(const PixelView& v, const Rect& r) {
  FUZZ_CHECK(v.data != nullptr);
  FUZZ_CHECK(v.stride >= size_t(v.width) * 4);
  FUZZ_CHECK(v.origin_x <= r.x && v.origin_y <= r.y);
  FUZZ_CHECK(v.origin_x + v.width >= r.x + r.w && v.origin_y + v.height >= r.y + r.h);
  static volatile uint32_t sink;
  sink = touch(v);
}

// The decode the Preprocessor runs, or the Status it failed with; ImageError is the only failure
// a decoder may report, so anything else escapes and crashes the target.
inline std::optional<PixelView> decode(const ImageInput& in, const ImageInfo& info, int scale,
                                       const Rect& region, Buffer& buffer, Status& status) {
  try {
    const PixelView v = decode_region(in.image, in.size, info, scale, region, buffer);
    check_covers(v, region);
    status = Status::kOk;
    return v;
  } catch (const ImageError& e) {
    FUZZ_CHECK(e.status() != Status::kOk);
    status = e.status();
    return std::nullopt;
  }
}

// Runs the Preprocessor twice, with fresh buffers and with buffers left over from earlier inputs:
// reused scratch memory must never show through in the output. It succeeds where the whole decode
// (`decode_status`) did, and fails with the header's Status where the header was refused. It may
// succeed where the whole decode failed: a JPEG that ends with its EOI marker is not decoded below
// the rows the output needs.
inline void check_preprocess(const ImageInput& in, Status decode_status, bool header_status) {
  const Spec spec = spec_from(in.params);
  const Preprocessor pre(spec);
  static Scratch reused;
  Scratch fresh;
  std::vector<uint8_t> a(spec.item_bytes()), b(spec.item_bytes());
  ItemResult ra, rb;
  pre.run(in.image, in.size, a.data(), fresh, ra);
  pre.run(in.image, in.size, b.data(), reused, rb);
  FUZZ_CHECK(ra.status == rb.status && ra.message == rb.message);
  FUZZ_CHECK(a == b);
  if (decode_status == Status::kOk) FUZZ_CHECK(ra.status == Status::kOk);
  if (header_status) FUZZ_CHECK(ra.status == decode_status);
  if (ra.status != Status::kOk) {
    FUZZ_CHECK(!ra.message.empty());
    // A failed item holds what a zero pixel normalizes to: all zero bytes unless normalized.
    if (!spec.normalize) {
      FUZZ_CHECK(std::all_of(a.begin(), a.end(), [](uint8_t c) { return c == 0; }));
    }
  }
}

// The checks every format gets; returns the header, or nothing when read_info refused the input.
inline std::optional<ImageInfo> check_image(const ImageInput& in, Status& full_status) {
  std::optional<ImageInfo> info;
  try {
    info = read_info(in.image, in.size, kMaxPixels);
  } catch (const ImageError& e) {
    FUZZ_CHECK(e.status() != Status::kOk);
    full_status = e.status();
    check_preprocess(in, full_status, true);
    return std::nullopt;
  }
  FUZZ_CHECK(info->width > 0 && info->height > 0);
  FUZZ_CHECK(int64_t(info->width) * info->height <= kMaxPixels);
  FUZZ_CHECK(info->orientation >= 1 && info->orientation <= 8);

  Buffer buffer;
  const Rect full{0, 0, info->width, info->height};
  const std::optional<PixelView> v = decode(in, *info, 8, full, buffer, full_status);
  if (v) {
    // Whole-image decodes start at the origin and are the image's size.
    FUZZ_CHECK(v->origin_x == 0 && v->origin_y == 0);
    FUZZ_CHECK(v->width == info->width && v->height == info->height);
  }

  try {
    ImageInfo rgb_info;
    const std::vector<uint8_t> rgb = decode_rgb(in.image, in.size, kMaxPixels, &rgb_info);
    FUZZ_CHECK(full_status == Status::kOk);
    FUZZ_CHECK(rgb.size() ==
               size_t(rgb_info.oriented_width()) * size_t(rgb_info.oriented_height()) * 3);
  } catch (const ImageError& e) {
    FUZZ_CHECK(e.status() == full_status);
  }
  check_preprocess(in, full_status, false);
  return info;
}

}  // namespace stoker::fuzz
