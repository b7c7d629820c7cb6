// A header-only look at a JPEG (no libjpeg, no allocation) deciding whether a GPU decoder can take
// it and produce exactly what the CPU path would: 8-bit Huffman baseline or extended sequential,
// three YCbCr components, no EXIF rotation.
#include <cstring>

#include "core/image.hpp"

namespace stoker {
namespace {

bool is_sof(uint8_t m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

}  // namespace

bool jpeg_gpu_friendly(const uint8_t* data, size_t size) {
  if (sniff_format(data, size) != ImageFormat::kJpeg) return false;
  bool friendly_frame = false;
  bool exif_seen = false;  // the CPU path reads the first Exif segment only
  size_t pos = 2;
  while (pos + 4 <= size) {
    if (data[pos] != 0xFF) return false;
    const uint8_t marker = data[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      pos += 2;
      continue;
    }
    if (marker == 0xDA) return friendly_frame;
    if (marker == 0xD9) return false;
    const size_t length = (size_t(data[pos + 2]) << 8) | data[pos + 3];
    if (length < 2 || pos + 2 + length > size) return false;
    const uint8_t* body = data + pos + 4;
    const size_t body_size = length - 2;
    if (is_sof(marker)) {
      if (marker != 0xC0 && marker != 0xC1) return false;
      friendly_frame = body_size >= 6 && body[0] == 8 && body[5] == 3;
    } else if (marker == 0xE1 && !exif_seen && body_size >= 6 &&
               std::memcmp(body, "Exif\0\0", 6) == 0) {
      exif_seen = true;
      if (parse_exif_orientation(body + 6, body_size - 6) != 1) return false;
    } else if (marker == 0xEE && body_size >= 12 && std::memcmp(body, "Adobe", 5) == 0) {
      // Transform 0 marks RGB (not YCbCr) components, which decoders treat differently.
      if (body[11] == 0) return false;
    }
    pos += 2 + length;
  }
  return false;
}

}  // namespace stoker
