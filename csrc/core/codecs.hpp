// Per-format decoders behind image.hpp; internal to the core.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/image.hpp"

namespace stoker::detail {

ImageInfo jpeg_info(const uint8_t* data, size_t size);
PixelView jpeg_decode(const uint8_t* data, size_t size, int scale_num, const Rect& region,
                      Buffer& buffer);

ImageInfo png_info(const uint8_t* data, size_t size);
PixelView png_decode(const uint8_t* data, size_t size, Buffer& buffer);

ImageInfo webp_info(const uint8_t* data, size_t size);
PixelView webp_decode(const uint8_t* data, size_t size, Buffer& buffer);

// Bytes of slack after every decoded buffer so vectorized readers may overrun the last pixel.
inline constexpr size_t kBufferSlack = 64;

}  // namespace stoker::detail
