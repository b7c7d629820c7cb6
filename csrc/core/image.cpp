#include "core/image.hpp"

#include <cstring>
#include <string>

#include "core/codecs.hpp"

namespace stoker {

uint8_t* Buffer::reserve(size_t bytes) {
  if (data_.size() < bytes) {
    data_.clear();
    data_.shrink_to_fit();
    data_.resize(bytes);
  }
  return data_.data();
}

const char* format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::kJpeg:
      return "jpeg";
    case ImageFormat::kPng:
      return "png";
    case ImageFormat::kWebp:
      return "webp";
    case ImageFormat::kUnknown:
      break;
  }
  return "unknown";
}

ImageFormat sniff_format(const uint8_t* data, size_t size) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return ImageFormat::kJpeg;
  if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return ImageFormat::kPng;
  if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) {
    return ImageFormat::kWebp;
  }
  return ImageFormat::kUnknown;
}

ImageInfo read_info(const uint8_t* data, size_t size, int64_t max_pixels) {
  if (data == nullptr || size == 0) throw ImageError(Status::kEmpty, "empty input");
  ImageInfo info;
  switch (sniff_format(data, size)) {
    case ImageFormat::kJpeg:
      info = detail::jpeg_info(data, size);
      break;
    case ImageFormat::kPng:
      info = detail::png_info(data, size);
      break;
    case ImageFormat::kWebp:
      info = detail::webp_info(data, size);
      break;
    case ImageFormat::kUnknown:
      throw ImageError(Status::kUnsupported, "unrecognized image format (not JPEG, PNG or WebP)");
  }
  if (info.width <= 0 || info.height <= 0) {
    throw ImageError(Status::kCorrupt, std::string(format_name(info.format)) + ": zero size");
  }
  const int64_t pixels = int64_t(info.width) * int64_t(info.height);
  if (pixels > max_pixels) {
    throw ImageError(Status::kTooLarge, std::to_string(info.width) + "x" +
                                            std::to_string(info.height) + " is " +
                                            std::to_string(pixels) + " pixels, over the limit of " +
                                            std::to_string(max_pixels));
  }
  return info;
}

int scaled_size(int size, int scale_num) { return int((int64_t(size) * scale_num + 7) / 8); }

PixelView decode_region(const uint8_t* data, size_t size, const ImageInfo& info, int scale_num,
                        const Rect& region, Buffer& buffer) {
  switch (info.format) {
    case ImageFormat::kJpeg:
      return detail::jpeg_decode(data, size, scale_num, region, buffer);
    case ImageFormat::kPng:
      return detail::png_decode(data, size, buffer);
    case ImageFormat::kWebp:
      return detail::webp_decode(data, size, buffer);
    case ImageFormat::kUnknown:
      break;
  }
  throw ImageError(Status::kUnsupported, "unrecognized image format (not JPEG, PNG or WebP)");
}

std::vector<uint8_t> decode_rgb(const uint8_t* data, size_t size, int64_t max_pixels,
                                ImageInfo* info_out) {
  const ImageInfo info = read_info(data, size, max_pixels);
  Buffer buffer;
  const PixelView v =
      decode_region(data, size, info, 8, Rect{0, 0, info.width, info.height}, buffer);
  const int ow = info.oriented_width(), oh = info.oriented_height();
  std::vector<uint8_t> rgb(size_t(ow) * size_t(oh) * 3);
  for (int y = 0; y < oh; ++y) {
    for (int x = 0; x < ow; ++x) {
      int sx, sy;
      oriented_to_stored(info.orientation, info.width, info.height, x, y, sx, sy);
      const uint8_t* p = v.data + size_t(sy - v.origin_y) * v.stride + size_t(sx - v.origin_x) * 4;
      std::memcpy(&rgb[(size_t(y) * size_t(ow) + size_t(x)) * 3], p, 3);
    }
  }
  if (info_out != nullptr) *info_out = info;
  return rgb;
}

}  // namespace stoker
