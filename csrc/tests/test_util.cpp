#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>
#ifdef STOKER_HAVE_WEBP
#include <webp/decode.h>
#include <webp/encode.h>
#endif

namespace stoker::test {

uint64_t hash_string(const std::string& s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

uint32_t mix(uint32_t x, uint32_t y, uint64_t seed) {
  uint64_t z = (uint64_t(x) << 32 | y) ^ (seed * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return uint32_t(z ^ (z >> 31));
}

uint8_t clamp_u8(double v) { return uint8_t(v <= 0.0 ? 0.0 : (v >= 255.0 ? 255.0 : v)); }

}  // namespace

Image make_rgb(int width, int height, uint64_t seed) {
  Image img(width, height, 3);
  const int wd = std::max(width - 1, 1), hd = std::max(height - 1, 1);
  const int sd = std::max(width + height - 2, 1);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const uint32_t n = mix(uint32_t(x), uint32_t(y), seed);
      // Smooth ramps, a few hard edges (a moving diagonal stripe) and +-24 of texture.
      const bool stripe = ((x + 2 * y + int(seed % 17)) / 23) % 5 == 0;
      const int base[3] = {x * 255 / wd, y * 255 / hd,
                           stripe ? 255 - (x + y) * 255 / sd : (x + y) * 255 / sd};
      uint8_t* p = img.at(x, y);
      for (int c = 0; c < 3; ++c) {
        const int noise = int((n >> (8 * c)) & 0xFF) % 49 - 24;
        p[c] = clamp_u8(double(base[c] + noise));
      }
    }
  }
  return img;
}

Image make_noise(int width, int height, int channels, uint64_t seed) {
  Image img(width, height, channels);
  Rng rng(seed);
  for (auto& v : img.px) v = rng.byte();
  return img;
}

Image to_gray(const Image& rgb) {
  Image g(rgb.width, rgb.height, 1);
  for (int y = 0; y < rgb.height; ++y) {
    for (int x = 0; x < rgb.width; ++x) {
      const uint8_t* p = rgb.at(x, y);
      *g.at(x, y) = uint8_t((p[0] * 299 + p[1] * 587 + p[2] * 114 + 500) / 1000);
    }
  }
  return g;
}

Image to_rgb(const Image& img) {
  Image out(img.width, img.height, 3);
  for (int y = 0; y < img.height; ++y) {
    for (int x = 0; x < img.width; ++x) {
      const uint8_t* p = img.at(x, y);
      uint8_t* q = out.at(x, y);
      if (img.channels < 3) {
        q[0] = q[1] = q[2] = p[0];
      } else {
        q[0] = p[0];
        q[1] = p[1];
        q[2] = p[2];
      }
    }
  }
  return out;
}

// EXIF ------------------------------------------------------------------------------------------

Bytes make_exif_tiff(int orientation, bool little_endian, bool as_long) {
  Bytes t;
  auto u16 = [&](uint32_t v) {
    if (little_endian) {
      t.push_back(uint8_t(v));
      t.push_back(uint8_t(v >> 8));
    } else {
      t.push_back(uint8_t(v >> 8));
      t.push_back(uint8_t(v));
    }
  };
  auto u32 = [&](uint32_t v) {
    if (little_endian) {
      u16(v & 0xFFFF);
      u16(v >> 16);
    } else {
      u16(v >> 16);
      u16(v & 0xFFFF);
    }
  };
  t.push_back(little_endian ? 'I' : 'M');
  t.push_back(little_endian ? 'I' : 'M');
  u16(42);
  u32(8);       // IFD0
  u16(2);       // two entries
  u16(0x010F);  // Make, ASCII, 6 bytes stored after the IFD
  u16(2);
  u32(6);
  u32(8 + 2 + 2 * 12 + 4);
  u16(0x0112);  // Orientation
  if (as_long) {
    u16(4);
    u32(1);
    u32(uint32_t(orientation));
  } else {
    u16(3);
    u32(1);
    u16(uint32_t(orientation));
    u16(0);
  }
  u32(0);  // no next IFD
  for (char c : std::string("Canon")) t.push_back(uint8_t(c));
  t.push_back(0);
  return t;
}

// JPEG ------------------------------------------------------------------------------------------

namespace {

void jpeg_abort_on_error(j_common_ptr cinfo) {
  char message[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, message);
  std::fprintf(stderr, "test libjpeg error: %s\n", message);
  std::abort();
}

}  // namespace

Bytes encode_jpeg(const Image& rgb, const JpegOptions& options) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  err.error_exit = jpeg_abort_on_error;
  jpeg_create_compress(&c);
  unsigned char* out = nullptr;
  unsigned long out_size = 0;
  jpeg_mem_dest(&c, &out, &out_size);
  c.image_width = JDIMENSION(rgb.width);
  c.image_height = JDIMENSION(rgb.height);
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  if (options.sampling == Sampling::kGray) {
    jpeg_set_colorspace(&c, JCS_GRAYSCALE);
  } else {
    const int h = options.sampling == Sampling::k444 ? 1 : 2;
    const int v = options.sampling == Sampling::k420 ? 2 : 1;
    c.comp_info[0].h_samp_factor = h;
    c.comp_info[0].v_samp_factor = v;
    for (int i = 1; i < 3; ++i) c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
  }
  jpeg_set_quality(&c, options.quality, TRUE);
  if (options.progressive) jpeg_simple_progression(&c);
  if (options.arithmetic) c.arith_code = TRUE;
  if (options.restart_rows > 0) c.restart_in_rows = options.restart_rows;
  if (options.optimize_huffman) c.optimize_coding = TRUE;
  jpeg_start_compress(&c, TRUE);
  if (options.orientation > 0) {
    Bytes app1 = {'E', 'x', 'i', 'f', 0, 0};
    const Bytes tiff = make_exif_tiff(options.orientation, options.exif_little_endian);
    app1.insert(app1.end(), tiff.begin(), tiff.end());
    jpeg_write_marker(&c, JPEG_APP0 + 1, app1.data(), unsigned(app1.size()));
  }
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(rgb.at(0, int(c.next_scanline)));
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  Bytes result(out, out + out_size);
  jpeg_destroy_compress(&c);
  std::free(out);
  return result;
}

Bytes encode_jpeg_cmyk(const Image& cmyk, bool ycck, int quality) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  err.error_exit = jpeg_abort_on_error;
  jpeg_create_compress(&c);
  unsigned char* out = nullptr;
  unsigned long out_size = 0;
  jpeg_mem_dest(&c, &out, &out_size);
  c.image_width = JDIMENSION(cmyk.width);
  c.image_height = JDIMENSION(cmyk.height);
  c.input_components = 4;
  c.in_color_space = JCS_CMYK;
  jpeg_set_defaults(&c);  // JCS_CMYK with an Adobe marker
  if (ycck) jpeg_set_colorspace(&c, JCS_YCCK);
  jpeg_set_quality(&c, quality, TRUE);
  jpeg_start_compress(&c, TRUE);
  while (c.next_scanline < c.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(cmyk.at(0, int(c.next_scanline)));
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  Bytes result(out, out + out_size);
  jpeg_destroy_compress(&c);
  std::free(out);
  return result;
}

Image reference_jpeg_decode_cmyk(const Bytes& data) {
  jpeg_decompress_struct d;
  jpeg_error_mgr err;
  d.err = jpeg_std_error(&err);
  err.error_exit = jpeg_abort_on_error;
  jpeg_create_decompress(&d);
  jpeg_mem_src(&d, data.data(), static_cast<unsigned long>(data.size()));
  jpeg_read_header(&d, TRUE);
  d.out_color_space = JCS_CMYK;
  jpeg_start_decompress(&d);
  Image img(int(d.output_width), int(d.output_height), 4);
  while (d.output_scanline < d.output_height) {
    JSAMPROW row = img.at(0, int(d.output_scanline));
    jpeg_read_scanlines(&d, &row, 1);
  }
  jpeg_finish_decompress(&d);
  jpeg_destroy_decompress(&d);
  return img;
}

Image reference_jpeg_decode(const Bytes& data, int scale_num) {
  jpeg_decompress_struct d;
  jpeg_error_mgr err;
  d.err = jpeg_std_error(&err);
  err.error_exit = jpeg_abort_on_error;
  jpeg_create_decompress(&d);
  jpeg_mem_src(&d, data.data(), static_cast<unsigned long>(data.size()));
  jpeg_read_header(&d, TRUE);
  d.out_color_space = JCS_RGB;
  d.scale_num = unsigned(scale_num);
  d.scale_denom = 8;
  jpeg_start_decompress(&d);
  Image img(int(d.output_width), int(d.output_height), 3);
  while (d.output_scanline < d.output_height) {
    JSAMPROW row = img.at(0, int(d.output_scanline));
    jpeg_read_scanlines(&d, &row, 1);
  }
  jpeg_finish_decompress(&d);
  jpeg_destroy_decompress(&d);
  return img;
}

// PNG -------------------------------------------------------------------------------------------

const char* png_kind_name(PngKind kind) {
  switch (kind) {
    case PngKind::kRgb8:
      return "rgb8";
    case PngKind::kRgba8:
      return "rgba8";
    case PngKind::kGray8:
      return "gray8";
    case PngKind::kGrayAlpha8:
      return "gray_alpha8";
    case PngKind::kPalette8:
      return "palette8";
    case PngKind::kRgb16:
      return "rgb16";
    case PngKind::kGray16:
      return "gray16";
    case PngKind::kGray1:
      return "gray1";
  }
  return "?";
}

namespace {

void png_write_to_vector(png_structp png, png_bytep data, png_size_t size) {
  auto* out = static_cast<Bytes*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + size);
}
void png_flush_nothing(png_structp) {}
[[noreturn]] void png_abort_on_error(png_structp, png_const_charp message) {
  std::fprintf(stderr, "test libpng error: %s\n", message);
  std::abort();
}

}  // namespace

PngImage encode_png(const Image& rgb, PngKind kind, bool interlaced, const Bytes& exif) {
  const int w = rgb.width, h = rgb.height;
  const Image gray = to_gray(rgb);
  PngImage result;
  result.expected = Image(w, h, 3);
  int color_type = PNG_COLOR_TYPE_RGB, depth = 8, samples = 3;
  switch (kind) {
    case PngKind::kRgb8:
    case PngKind::kRgb16:
      break;
    case PngKind::kRgba8:
      color_type = PNG_COLOR_TYPE_RGB_ALPHA;
      samples = 4;
      break;
    case PngKind::kGray8:
    case PngKind::kGray16:
    case PngKind::kGray1:
      color_type = PNG_COLOR_TYPE_GRAY;
      samples = 1;
      break;
    case PngKind::kGrayAlpha8:
      color_type = PNG_COLOR_TYPE_GRAY_ALPHA;
      samples = 2;
      break;
    case PngKind::kPalette8:
      color_type = PNG_COLOR_TYPE_PALETTE;
      samples = 1;
      break;
  }
  if (kind == PngKind::kRgb16 || kind == PngKind::kGray16) depth = 16;
  if (kind == PngKind::kGray1) depth = 1;
  const size_t row_bytes =
      depth == 1 ? (size_t(w) + 7) / 8 : size_t(w) * size_t(samples) * size_t(depth / 8);
  Bytes rows(row_bytes * size_t(h), 0);
  for (int y = 0; y < h; ++y) {
    uint8_t* row = rows.data() + size_t(y) * row_bytes;
    for (int x = 0; x < w; ++x) {
      const uint8_t* p = rgb.at(x, y);
      const uint8_t g = *gray.at(x, y);
      const uint8_t noise = uint8_t(mix(uint32_t(x), uint32_t(y), 77));
      uint8_t* e = result.expected.at(x, y);
      switch (kind) {
        case PngKind::kRgb8:
          std::memcpy(row + 3 * x, p, 3);
          std::memcpy(e, p, 3);
          break;
        case PngKind::kRgba8:
          std::memcpy(row + 4 * x, p, 3);
          row[4 * x + 3] = noise;
          std::memcpy(e, p, 3);
          break;
        case PngKind::kGray8:
          row[x] = g;
          e[0] = e[1] = e[2] = g;
          break;
        case PngKind::kGrayAlpha8:
          row[2 * x] = g;
          row[2 * x + 1] = noise;
          e[0] = e[1] = e[2] = g;
          break;
        case PngKind::kPalette8: {
          const int idx = (p[0] * 6 / 256) * 36 + (p[1] * 6 / 256) * 6 + p[2] * 6 / 256;
          row[x] = uint8_t(idx);
          e[0] = uint8_t(idx / 36 * 51);
          e[1] = uint8_t(idx / 6 % 6 * 51);
          e[2] = uint8_t(idx % 6 * 51);
          break;
        }
        case PngKind::kRgb16:
          for (int c = 0; c < 3; ++c) {
            row[6 * x + 2 * c] = p[c];  // big-endian: the high byte first
            row[6 * x + 2 * c + 1] = uint8_t(noise + 85 * c);
            e[c] = p[c];
          }
          break;
        case PngKind::kGray16:
          row[2 * x] = g;
          row[2 * x + 1] = noise;
          e[0] = e[1] = e[2] = g;
          break;
        case PngKind::kGray1: {
          const bool on = g >= 128;
          if (on) row[x / 8] |= uint8_t(0x80 >> (x % 8));
          e[0] = e[1] = e[2] = on ? 255 : 0;
          break;
        }
      }
    }
  }

  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, png_abort_on_error, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &result.data, png_write_to_vector, png_flush_nothing);
  png_set_IHDR(png, info, png_uint_32(w), png_uint_32(h), depth, color_type,
               interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (kind == PngKind::kPalette8) {
    png_color palette[216];
    for (int i = 0; i < 216; ++i) {
      palette[i].red = png_byte(i / 36 * 51);
      palette[i].green = png_byte(i / 6 % 6 * 51);
      palette[i].blue = png_byte(i % 6 * 51);
    }
    png_set_PLTE(png, info, palette, 216);
    png_byte trans[16];
    for (int i = 0; i < 16; ++i) trans[i] = png_byte(i * 16);
    png_set_tRNS(png, info, trans, 16, nullptr);
  }
#ifdef PNG_eXIf_SUPPORTED
  if (!exif.empty()) {
    png_set_eXIf_1(png, info, png_uint_32(exif.size()), const_cast<png_bytep>(exif.data()));
  }
#else
  (void)exif;
#endif
  png_write_info(png, info);
  std::vector<png_bytep> pointers{size_t(h), nullptr};
  for (int y = 0; y < h; ++y) pointers[size_t(y)] = rows.data() + size_t(y) * row_bytes;
  png_write_image(png, pointers.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return result;
}

// WebP ------------------------------------------------------------------------------------------

#ifdef STOKER_HAVE_WEBP
Bytes encode_webp(const Image& rgb, bool lossless, int quality) {
  uint8_t* out = nullptr;
  const size_t size =
      lossless ? WebPEncodeLosslessRGB(rgb.px.data(), rgb.width, rgb.height, rgb.width * 3, &out)
               : WebPEncodeRGB(rgb.px.data(), rgb.width, rgb.height, rgb.width * 3, float(quality),
                               &out);
  if (size == 0 || out == nullptr) {
    std::fprintf(stderr, "test WebP encode failed\n");
    std::abort();
  }
  Bytes result(out, out + size);
  WebPFree(out);
  return result;
}

Bytes webp_with_exif(const Bytes& simple, int width, int height, const Bytes& tiff) {
  auto le32 = [](Bytes& b, uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(uint8_t(v >> (8 * i)));
  };
  auto le24 = [](Bytes& b, uint32_t v) {
    for (int i = 0; i < 3; ++i) b.push_back(uint8_t(v >> (8 * i)));
  };
  Bytes body = {'W', 'E', 'B', 'P', 'V', 'P', '8', 'X'};
  le32(body, 10);
  body.push_back(0x08);  // EXIF present
  body.push_back(0);
  body.push_back(0);
  body.push_back(0);
  le24(body, uint32_t(width - 1));
  le24(body, uint32_t(height - 1));
  body.insert(body.end(), simple.begin() + 12, simple.end());  // the VP8/VP8L chunk
  body.insert(body.end(), {'E', 'X', 'I', 'F'});
  le32(body, uint32_t(tiff.size()));
  body.insert(body.end(), tiff.begin(), tiff.end());
  if (tiff.size() % 2 == 1) body.push_back(0);
  Bytes file = {'R', 'I', 'F', 'F'};
  le32(file, uint32_t(body.size()));
  file.insert(file.end(), body.begin(), body.end());
  return file;
}

Image reference_webp_decode(const Bytes& data) {
  int w = 0, h = 0;
  uint8_t* px = WebPDecodeRGB(data.data(), data.size(), &w, &h);
  if (px == nullptr) {
    std::fprintf(stderr, "test WebP decode failed\n");
    std::abort();
  }
  Image img(w, h, 3);
  std::memcpy(img.px.data(), px, img.px.size());
  WebPFree(px);
  return img;
}
#endif

// Geometry --------------------------------------------------------------------------------------

Image apply_orientation(const Image& s, int orientation) {
  const int w = s.width, h = s.height;
  const bool swap = orientation >= 5;
  Image d(swap ? h : w, swap ? w : h, s.channels);
  for (int y = 0; y < d.height; ++y) {
    for (int x = 0; x < d.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2:
          sx = w - 1 - x;
          break;
        case 3:
          sx = w - 1 - x;
          sy = h - 1 - y;
          break;
        case 4:
          sy = h - 1 - y;
          break;
        case 5:
          sx = y;
          sy = x;
          break;
        case 6:
          sx = y;
          sy = h - 1 - x;
          break;
        case 7:
          sx = w - 1 - y;
          sy = h - 1 - x;
          break;
        case 8:
          sx = w - 1 - y;
          sy = x;
          break;
        default:
          break;
      }
      std::memcpy(d.at(x, y), s.at(sx, sy), size_t(s.channels));
    }
  }
  return d;
}

int crop_offset(int size, int crop) {
  const int d = size - crop;
  const int half = d / 2;
  if (d % 2 == 0) return half;
  return half % 2 == 0 ? half : half + 1;  // round(half + 0.5) to even
}

Image center_crop(const Image& img, int crop_w, int crop_h) {
  const int off_x =
      crop_w > img.width ? -((crop_w - img.width) / 2) : crop_offset(img.width, crop_w);
  const int off_y =
      crop_h > img.height ? -((crop_h - img.height) / 2) : crop_offset(img.height, crop_h);
  Image out(crop_w, crop_h, img.channels);
  for (int y = 0; y < crop_h; ++y) {
    for (int x = 0; x < crop_w; ++x) {
      const int sx = x + off_x, sy = y + off_y;
      if (sx < 0 || sy < 0 || sx >= img.width || sy >= img.height) continue;  // zero padding
      std::memcpy(out.at(x, y), img.at(sx, sy), size_t(img.channels));
    }
  }
  return out;
}

// Reference resampler ---------------------------------------------------------------------------

namespace {

double triangle(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double cubic(double x, double a) {
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

}  // namespace

std::vector<RefWeights> reference_weights(int in, int out, Interp interp, bool antialias) {
  std::vector<RefWeights> result(static_cast<size_t>(out));
  if (interp == Interp::kNearest) {
    const float scale = float(in) / float(out);
    for (int i = 0; i < out; ++i) {
      int64_t src = in == out ? i : int64_t(std::floor(float(i) * scale));
      src = std::min<int64_t>(src, in - 1);
      result[size_t(i)] = RefWeights{int(src), {1.0}};
    }
    return result;
  }
  const double scale = double(in) / double(out);
  if (antialias) {
    const double interp_size = interp == Interp::kBicubic ? 4.0 : 2.0;
    const double support = scale >= 1.0 ? interp_size / 2.0 * scale : interp_size / 2.0;
    const int64_t max_taps = int64_t(std::ceil(support)) * 2 + 1;
    const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    for (int i = 0; i < out; ++i) {
      const double center = scale * (i + 0.5);
      const int64_t xmin = std::max(int64_t(center - support + 0.5), int64_t(0));
      int64_t xsize = std::min(int64_t(center + support + 0.5), int64_t(in)) - xmin;
      xsize = std::clamp(xsize, int64_t(0), max_taps);
      RefWeights& rw = result[size_t(i)];
      rw.first = int(xmin);
      double total = 0.0;
      for (int64_t j = 0; j < xsize; ++j) {
        const double x = (double(j + xmin) - center + 0.5) * invscale;
        const double v = interp == Interp::kBicubic ? cubic(x, -0.5) : triangle(x);
        rw.w.push_back(v);
        total += v;
      }
      if (total != 0.0) {
        for (double& v : rw.w) v /= total;
      }
    }
    return result;
  }
  // Plain (align_corners=False) kernels: bilinear between the two neighbours of the source
  // coordinate (clamped at 0), bicubic a = -0.75 with border samples replicated.
  for (int i = 0; i < out; ++i) {
    double src = scale * (i + 0.5) - 0.5;
    RefWeights& rw = result[size_t(i)];
    if (interp == Interp::kBilinear) {
      src = std::max(src, 0.0);
      const int x0 = std::min(int(src), in - 1);
      const double t = src - x0;
      rw.first = x0;
      rw.w = x0 + 1 < in ? std::vector<double>{1.0 - t, t} : std::vector<double>{1.0};
      continue;
    }
    const int x0 = int(std::floor(src));
    const double t = src - x0;
    const double k[4] = {cubic(t + 1.0, -0.75), cubic(t, -0.75), cubic(1.0 - t, -0.75),
                         cubic(2.0 - t, -0.75)};
    const int lo = std::clamp(x0 - 1, 0, in - 1), hi = std::clamp(x0 + 2, 0, in - 1);
    rw.first = lo;
    rw.w.assign(size_t(hi - lo + 1), 0.0);
    for (int j = 0; j < 4; ++j) rw.w[size_t(std::clamp(x0 - 1 + j, 0, in - 1) - lo)] += k[j];
  }
  return result;
}

namespace {

// One pass along x (horizontal) or y, `quantize`: torch's int16 weights instead of doubles.
Image resize_pass(const Image& src, int out, bool horizontal, Interp interp, bool antialias,
                  bool quantize) {
  const int in = horizontal ? src.width : src.height;
  if (in == out) return src;
  const std::vector<RefWeights> weights = reference_weights(in, out, interp, antialias);
  int precision = 0;
  if (quantize) {
    double max_w = 0.0;
    for (const RefWeights& rw : weights) {
      for (double v : rw.w) max_w = std::max(max_w, v);
    }
    for (; precision < 22; ++precision) {
      if (int(0.5 + max_w * double(1 << (precision + 1))) >= (1 << 15)) break;
    }
  }
  Image dst(horizontal ? out : src.width, horizontal ? src.height : out, src.channels);
  const int other = horizontal ? src.height : src.width;
  for (int i = 0; i < out; ++i) {
    const RefWeights& rw = weights[size_t(i)];
    std::vector<int32_t> qw(rw.w.size());
    for (size_t j = 0; j < rw.w.size(); ++j) {
      const double v = rw.w[j] * double(1 << precision);
      qw[j] = int16_t(v < 0 ? v - 0.5 : v + 0.5);
    }
    for (int o = 0; o < other; ++o) {
      for (int c = 0; c < src.channels; ++c) {
        double acc = 0.0;
        int64_t iacc = precision > 0 ? int64_t(1) << (precision - 1) : 0;
        for (size_t j = 0; j < rw.w.size(); ++j) {
          const int s = rw.first + int(j);
          const uint8_t v = horizontal ? src.at(s, o)[c] : src.at(o, s)[c];
          acc += rw.w[j] * v;
          iacc += int64_t(qw[j]) * v;
        }
        uint8_t r;
        if (quantize) {
          const int64_t q = iacc >> precision;
          r = uint8_t(q < 0 ? 0 : (q > 255 ? 255 : q));
        } else {
          r = clamp_u8(std::floor(acc + 0.5));
        }
        (horizontal ? dst.at(i, o) : dst.at(o, i))[c] = r;
      }
    }
  }
  return dst;
}

}  // namespace

Image reference_resize(const Image& rgb, int out_w, int out_h, Interp interp, bool antialias) {
  const Image h = resize_pass(rgb, out_w, true, interp, antialias, false);
  return resize_pass(h, out_h, false, interp, antialias, false);
}

Image fixed_point_resize(const Image& rgb, int out_w, int out_h, Interp interp, bool antialias) {
  const Image h = resize_pass(rgb, out_w, true, interp, antialias, true);
  return resize_pass(h, out_h, false, interp, antialias, true);
}

// Misc ------------------------------------------------------------------------------------------

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const int exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  float v;
  if (exp == 0) {
    v = std::ldexp(float(mant), -24);
  } else if (exp == 31) {
    v = mant ? std::nanf("") : INFINITY;
  } else {
    v = std::ldexp(float(mant | 0x400), exp - 25);
  }
  return sign ? -v : v;
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

uint32_t crc32(const uint8_t* data, size_t size) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

// Watchdog --------------------------------------------------------------------------------------

Watchdog::Watchdog(double limit_s) : limit_s_(limit_s), thread_([this] { loop(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::arm(const std::string& what) {
  std::lock_guard<std::mutex> lock(mutex_);
  what_ = what;
  armed_ = true;
  deadline_ =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(limit_s_ * 1000.0));
}

void Watchdog::disarm() {
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = false;
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(200));
    if (armed_ && std::chrono::steady_clock::now() > deadline_) {
      std::fprintf(stderr, "\nWATCHDOG: %s ran longer than %.0f s (hang?)\n", what_.c_str(),
                   limit_s_);
      std::fflush(stderr);
      std::abort();
    }
  }
}

}  // namespace stoker::test
