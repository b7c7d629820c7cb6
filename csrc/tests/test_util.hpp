// Shared helpers of the native tests: deterministic random numbers, test images, encoders built on
// the same codec libraries the core links (libjpeg, libpng, libwebp), reference decoders and a
// double-precision reference resampler written from torch's definition.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "core/image.hpp"
#include "core/spec.hpp"
#include "core/status.hpp"

namespace stoker {

// GoogleTest prints Status values by name.
inline void PrintTo(Status s, std::ostream* os) { *os << status_name(s); }

}  // namespace stoker

namespace stoker::test {

using Bytes = std::vector<uint8_t>;

// SplitMix64: small, fast and the same on every platform.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); n > 0.
  uint64_t below(uint64_t n) { return next() % n; }
  // Uniform in [lo, hi].
  int range(int lo, int hi) { return lo + int(below(uint64_t(hi - lo) + 1)); }
  bool chance(double p) { return double(next() >> 11) * 0x1.0p-53 < p; }
  uint8_t byte() { return uint8_t(next()); }

 private:
  uint64_t state_;
};

uint64_t hash_string(const std::string& s);

// Packed 8-bit pixels, `channels` per pixel (1, 2, 3 or 4), rows without padding.
struct Image {
  int width = 0;
  int height = 0;
  int channels = 3;
  Bytes px;

  Image() = default;
  Image(int w, int h, int c)
      : width(w), height(h), channels(c), px(size_t(w) * size_t(h) * size_t(c)) {}
  uint8_t* at(int x, int y) {
    return px.data() + (size_t(y) * size_t(width) + size_t(x)) * size_t(channels);
  }
  const uint8_t* at(int x, int y) const {
    return px.data() + (size_t(y) * size_t(width) + size_t(x)) * size_t(channels);
  }
};

// A smooth gradient plus a deterministic pseudo-random texture, RGB.
Image make_rgb(int width, int height, uint64_t seed);
// Random bytes, for resampler tests; `channels` per pixel.
Image make_noise(int width, int height, int channels, uint64_t seed);
// Gray (1 channel) from RGB with integer BT.601 luma.
Image to_gray(const Image& rgb);
// Replicates gray to RGB or drops everything past the first three channels.
Image to_rgb(const Image& img);

// EXIF/TIFF -------------------------------------------------------------------------------------

// A minimal TIFF structure whose IFD0 holds a Make tag (ASCII, stored out of line) followed by an
// Orientation tag (SHORT, or LONG when `as_long`).
Bytes make_exif_tiff(int orientation, bool little_endian, bool as_long = false);

// JPEG ------------------------------------------------------------------------------------------

enum class Sampling { k420, k422, k444, kGray };

struct JpegOptions {
  int quality = 90;
  Sampling sampling = Sampling::k420;
  bool progressive = false;
  bool arithmetic = false;
  int restart_rows = 0;
  int orientation = 0;  // 0: no EXIF block
  bool exif_little_endian = false;
  bool optimize_huffman = false;  // Huffman tables fitted to the image instead of the standard ones
};

Bytes encode_jpeg(const Image& rgb, const JpegOptions& options);

// CMYK (4 channels, stored as given: Adobe-inverted by convention) or, with `ycck`, YCCK JPEG.
Bytes encode_jpeg_cmyk(const Image& cmyk, bool ycck, int quality = 90);

// The stored CMYK samples of a CMYK/YCCK JPEG, decoded by libjpeg (JCS_CMYK), 4 channels.
Image reference_jpeg_decode_cmyk(const Bytes& data);

// A full decode through libjpeg with default settings into JCS_RGB at scale_num/8: the reference
// the core must reproduce byte for byte. Stored orientation (EXIF ignored).
Image reference_jpeg_decode(const Bytes& data, int scale_num = 8);

// PNG -------------------------------------------------------------------------------------------

enum class PngKind { kRgb8, kRgba8, kGray8, kGrayAlpha8, kPalette8, kRgb16, kGray16, kGray1 };
const char* png_kind_name(PngKind kind);

struct PngImage {
  Bytes data;
  Image expected;  // the RGB pixels a decoder must produce (alpha dropped, 16-bit high bytes)
};

// Derives pixels of `kind` from `rgb` and encodes them; `exif` (a TIFF structure) goes into an
// eXIf chunk when non-empty.
PngImage encode_png(const Image& rgb, PngKind kind, bool interlaced, const Bytes& exif = {});

// WebP ------------------------------------------------------------------------------------------

#ifdef STOKER_HAVE_WEBP
Bytes encode_webp(const Image& rgb, bool lossless, int quality = 80);
// Wraps a simple-format WebP into an extended (VP8X) file with an EXIF chunk.
Bytes webp_with_exif(const Bytes& simple, int width, int height, const Bytes& tiff);
// libwebp's own decode to RGB.
Image reference_webp_decode(const Bytes& data);
#endif

// Geometry --------------------------------------------------------------------------------------

// The displayed image of a stored image with EXIF orientation 1..8.
Image apply_orientation(const Image& stored, int orientation);

// torchvision's CenterCrop (zero padding where the crop is larger than the image).
Image center_crop(const Image& img, int crop_w, int crop_h);

// Reference resampler --------------------------------------------------------------------------

struct RefWeights {
  int first = 0;
  std::vector<double> w;
};

// Per-output taps of torch's uint8 kernels: the antialiased kernel (support widened by the
// downscale factor) when `antialias`, the plain align_corners=False kernels otherwise, and torch's
// float-scale nearest.
std::vector<RefWeights> reference_weights(int in_size, int out_size, Interp interp, bool antialias);

// Horizontal then vertical, each pass in double precision and rounded to uint8 (as torch stores the
// intermediate image); an axis whose size does not change is left alone.
Image reference_resize(const Image& rgb, int out_w, int out_h, Interp interp, bool antialias);

// The same, with the double weights quantized to int16 exactly as torch does (precision from the
// largest weight of the axis, bias 2^(p-1), arithmetic shift, clamp).
Image fixed_point_resize(const Image& rgb, int out_w, int out_h, Interp interp, bool antialias);

// Misc ------------------------------------------------------------------------------------------

// torchvision's center-crop offset, with Python's round-half-to-even of (size - crop) / 2.
int crop_offset(int size, int crop);

float half_to_float(uint16_t h);
float bf16_to_float(uint16_t b);

Bytes read_file(const std::string& path);

// The CRC-32 of PNG chunks (and zlib).
uint32_t crc32(const uint8_t* data, size_t size);

// Aborts the process with a message when a guarded call runs longer than `limit_s`: the tests must
// fail loudly rather than hang.
class Watchdog {
 public:
  explicit Watchdog(double limit_s);
  ~Watchdog();
  void arm(const std::string& what);  // call before each guarded call
  void disarm();

 private:
  void loop();
  std::mutex mutex_;
  std::condition_variable cv_;
  std::string what_;
  std::chrono::steady_clock::time_point deadline_;
  bool armed_ = false;
  bool stop_ = false;
  double limit_s_;
  std::thread thread_;
};

}  // namespace stoker::test
