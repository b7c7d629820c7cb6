// PNG through libpng's progressive-row API with setjmp error handling; every color type and depth
// is transformed to 8-bit RGBX (alpha kept in the 4th byte, then ignored).
#include <png.h>

#include <csetjmp>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "core/codecs.hpp"

namespace stoker::detail {
namespace {

struct Reader {
  const uint8_t* data;
  size_t size;
  size_t pos;
  char message[256];
};

void on_read(png_structp png, png_bytep out, size_t length) {
  auto* r = static_cast<Reader*>(png_get_io_ptr(png));
  if (length > r->size - r->pos) png_error(png, "unexpected end of data");
  std::memcpy(out, r->data + r->pos, length);
  r->pos += length;
}

void on_error(png_structp png, png_const_charp message) {
  auto* r = static_cast<Reader*>(png_get_error_ptr(png));
  std::snprintf(r->message, sizeof(r->message), "%s", message);
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

struct PngSession {
  Reader reader{};
  png_structp png = nullptr;
  png_infop info = nullptr;
  bool alloc_failed = false;

  PngSession(const uint8_t* data, size_t size) {
    reader.data = data;
    reader.size = size;
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, on_error, on_warning);
    if (png != nullptr) info = png_create_info_struct(png);
    if (png == nullptr || info == nullptr) {
      png_destroy_read_struct(&png, &info, nullptr);
      throw ImageError(Status::kInternal, "PNG: cannot create decoder");
    }
    png_set_read_fn(png, &reader, on_read);
    // Dimensions are checked against the caller's pixel limit; libpng's own cap is the format's.
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  }
  ~PngSession() { png_destroy_read_struct(&png, &info, nullptr); }
  [[noreturn]] void fail() const {
    if (alloc_failed) throw ImageError(Status::kInternal, "out of memory decoding PNG");
    throw ImageError(Status::kCorrupt, std::string("PNG: ") + reader.message);
  }
};

bool read_info(PngSession& s) {
  if (setjmp(png_jmpbuf(s.png))) return false;
  png_read_info(s.png, s.info);
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// ImageMagick stores EXIF as a text chunk "Raw profile type exif": "\nexif\n<length>\n<hex...>".
int orientation_from_raw_profile(const char* text, size_t length) {
  size_t pos = 0;
  int newlines = 0;
  while (pos < length && newlines < 3) {
    if (text[pos++] == '\n') ++newlines;
  }
  std::vector<uint8_t> bytes;
  int high = -1;
  for (; pos < length && bytes.size() < 65536; ++pos) {
    const int v = hex_value(text[pos]);
    if (v < 0) continue;
    if (high < 0) {
      high = v;
    } else {
      bytes.push_back(uint8_t(high << 4 | v));
      high = -1;
    }
  }
  size_t skip = bytes.size() >= 6 && std::memcmp(bytes.data(), "Exif\0\0", 6) == 0 ? 6 : 0;
  return parse_exif_orientation(bytes.data() + skip, bytes.size() - skip);
}

int png_orientation(const PngSession& s) {
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(s.png, s.info, &exif_size, &exif) != 0 && exif != nullptr) {
    size_t skip = exif_size >= 6 && std::memcmp(exif, "Exif\0\0", 6) == 0 ? 6 : 0;
    return parse_exif_orientation(exif + skip, exif_size - skip);
  }
#endif
  png_textp text = nullptr;
  int count = 0;
  png_get_text(s.png, s.info, &text, &count);
  for (int i = 0; i < count; ++i) {
    if (std::strcmp(text[i].key, "Raw profile type exif") == 0) {
      const size_t length = text[i].text_length != 0 ? text[i].text_length : text[i].itxt_length;
      return orientation_from_raw_profile(text[i].text, length);
    }
  }
  return 1;
}

struct RowsState {
  uint8_t* pixels;
  size_t stride;
  std::vector<png_bytep>* rows;
};

bool read_rows(PngSession& s, Buffer& buffer, RowsState& st) {
  if (setjmp(png_jmpbuf(s.png))) return false;
  png_structp png = s.png;
  const int color = png_get_color_type(png, s.info);
  const int depth = png_get_bit_depth(png, s.info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png);
  if ((color & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(png);
  if ((color & PNG_COLOR_MASK_ALPHA) == 0) png_set_filler(png, 0xff, PNG_FILLER_AFTER);
  png_set_interlace_handling(png);
  png_read_update_info(png, s.info);
  const size_t width = png_get_image_width(png, s.info);
  const size_t height = png_get_image_height(png, s.info);
  st.stride = width * 4;
  if (png_get_rowbytes(png, s.info) != st.stride) png_error(png, "unexpected row size");
  try {
    st.pixels = buffer.reserve(st.stride * height + kBufferSlack);
    st.rows->resize(height);
  } catch (const std::bad_alloc&) {
    s.alloc_failed = true;
    return false;
  }
  for (size_t y = 0; y < height; ++y) (*st.rows)[y] = st.pixels + y * st.stride;
  png_read_image(png, st.rows->data());
  return true;
}

}  // namespace

ImageInfo png_info(const uint8_t* data, size_t size) {
  PngSession s(data, size);
  if (!read_info(s)) s.fail();
  ImageInfo info;
  info.format = ImageFormat::kPng;
  info.width = int(png_get_image_width(s.png, s.info));
  info.height = int(png_get_image_height(s.png, s.info));
  info.orientation = png_orientation(s);
  return info;
}

PixelView png_decode(const uint8_t* data, size_t size, Buffer& buffer) {
  PngSession s(data, size);
  if (!read_info(s)) s.fail();
  std::vector<png_bytep> rows;
  RowsState st{nullptr, 0, &rows};
  if (!read_rows(s, buffer, st)) s.fail();
  PixelView view;
  view.data = st.pixels;
  view.width = int(png_get_image_width(s.png, s.info));
  view.height = int(png_get_image_height(s.png, s.info));
  view.stride = st.stride;
  return view;
}

}  // namespace stoker::detail
