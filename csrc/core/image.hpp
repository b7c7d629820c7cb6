// Decoding: format sniffing, headers, EXIF orientation and region decodes into RGBX pixels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/status.hpp"

namespace stoker {

enum class ImageFormat : uint8_t { kUnknown, kJpeg, kPng, kWebp };
const char* format_name(ImageFormat f);
ImageFormat sniff_format(const uint8_t* data, size_t size);

// EXIF orientation 1..8 from a TIFF structure (the payload of an EXIF block after "Exif\0\0").
// Returns 1 for anything malformed or missing.
int parse_exif_orientation(const uint8_t* tiff, size_t size);

struct Rect {
  int x = 0, y = 0, w = 0, h = 0;
};

struct ImageInfo {
  ImageFormat format = ImageFormat::kUnknown;
  int width = 0;  // as stored, before orientation
  int height = 0;
  int orientation = 1;
  int oriented_width() const { return orientation >= 5 ? height : width; }
  int oriented_height() const { return orientation >= 5 ? width : height; }
};

// The stored pixel (sx, sy) that EXIF `orientation` shows at (x, y); width and height are stored.
inline void oriented_to_stored(int orientation, int width, int height, int x, int y, int& sx,
                               int& sy) {
  switch (orientation) {
    case 2:
      sx = width - 1 - x;
      sy = y;
      return;
    case 3:
      sx = width - 1 - x;
      sy = height - 1 - y;
      return;
    case 4:
      sx = x;
      sy = height - 1 - y;
      return;
    case 5:
      sx = y;
      sy = x;
      return;
    case 6:
      sx = y;
      sy = height - 1 - x;
      return;
    case 7:
      sx = width - 1 - y;
      sy = height - 1 - x;
      return;
    case 8:
      sx = width - 1 - y;
      sy = x;
      return;
    default:
      sx = x;
      sy = y;
      return;
  }
}

// RGBX pixels (4 bytes each, the 4th unspecified) of a rectangle of an image; `origin` is where
// pixel (0, 0) of `data` lies in the image it was cut from.
struct PixelView {
  const uint8_t* data = nullptr;
  int width = 0;
  int height = 0;
  size_t stride = 0;  // bytes between rows
  int origin_x = 0;
  int origin_y = 0;
};

// Growable byte buffer reused across images; capacity only grows, with room for vector reads
// past the last pixel.
class Buffer {
 public:
  uint8_t* reserve(size_t bytes);
  uint8_t* data() { return data_.data(); }

 private:
  std::vector<uint8_t> data_;
};

// True for a JPEG that a GPU decoder turns into the same pixels as the CPU path: 8-bit sequential
// Huffman, three YCbCr components, upright. Reads marker segments only.
bool jpeg_gpu_friendly(const uint8_t* data, size_t size);

// Reads the header and orientation; throws ImageError (kEmpty, kUnsupported, kCorrupt, kTooLarge).
ImageInfo read_info(const uint8_t* data, size_t size, int64_t max_pixels);

// Length of a side of `size` pixels decoded at JPEG DCT scale scale_num/8 (rounded up, as libjpeg).
int scaled_size(int size, int scale_num);

// Decodes `region` (in stored coordinates of the image scaled by scale_num/8, scale_num < 8 only
// for JPEG) into `buffer`. The returned view covers at least `region`.
PixelView decode_region(const uint8_t* data, size_t size, const ImageInfo& info, int scale_num,
                        const Rect& region, Buffer& buffer);

// Full decode with orientation applied, as packed RGB; for tests and the Python decode API.
std::vector<uint8_t> decode_rgb(const uint8_t* data, size_t size, int64_t max_pixels,
                                ImageInfo* info_out);

}  // namespace stoker
