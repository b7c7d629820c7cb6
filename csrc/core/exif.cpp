#include <cstdint>
#include <cstring>

#include "core/image.hpp"

namespace stoker {

int parse_exif_orientation(const uint8_t* tiff, size_t size) {
  if (tiff == nullptr || size < 8) return 1;
  bool little;
  if (tiff[0] == 'I' && tiff[1] == 'I') {
    little = true;
  } else if (tiff[0] == 'M' && tiff[1] == 'M') {
    little = false;
  } else {
    return 1;
  }
  auto u16 = [&](size_t off) -> uint32_t {
    return little ? uint32_t(tiff[off]) | uint32_t(tiff[off + 1]) << 8
                  : uint32_t(tiff[off]) << 8 | uint32_t(tiff[off + 1]);
  };
  auto u32 = [&](size_t off) -> uint32_t {
    return little ? u16(off) | u16(off + 2) << 16 : u16(off) << 16 | u16(off + 2);
  };
  if (u16(2) != 42) return 1;
  const size_t ifd = u32(4);
  if (ifd > size || size - ifd < 2) return 1;
  const size_t count = u16(ifd);
  for (size_t i = 0; i < count; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    if (entry > size || size - entry < 12) return 1;
    if (u16(entry) != 0x0112) continue;
    const uint32_t type = u16(entry + 2);
    uint32_t value;
    if (type == 3) {  // SHORT
      value = u16(entry + 8);
    } else if (type == 4) {  // LONG, written by a few tools
      value = u32(entry + 8);
    } else {
      return 1;
    }
    return value >= 1 && value <= 8 ? int(value) : 1;
  }
  return 1;
}

}  // namespace stoker
