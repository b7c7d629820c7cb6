// JPEG through libjpeg(-turbo). libjpeg reports fatal errors through a callback that must not
// return, so errors longjmp back into the function that called setjmp; those functions keep only
// trivially destructible locals, and the state a longjmp must see lives in JpegSession.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>

// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include "core/codecs.hpp"
#include "core/jpeg_entropy.hpp"

namespace stoker::detail {
namespace {

struct ErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  int code;
  // Set when stoker's entropy decoder met data it leaves to libjpeg (see FastEntropy).
  bool redo_with_libjpeg;
};

void on_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  err->code = cinfo->err->msg_code;
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// libjpeg recovers from most corrupt data with a warning; running out of data is the exception we
// refuse, because the recovered image is mostly gray filler.
void on_emit_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) on_error_exit(cinfo);
  cinfo->err->num_warnings++;
}

void on_output_message(j_common_ptr) {}

struct JpegSession {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  bool created = false;
  bool alloc_failed = false;

  JpegSession() {
    std::memset(&cinfo, 0, sizeof(cinfo));
    std::memset(&err, 0, sizeof(err));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error_exit;
    err.pub.emit_message = on_emit_message;
    err.pub.output_message = on_output_message;
  }
  ~JpegSession() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
  [[noreturn]] void fail() const {
    if (alloc_failed) throw ImageError(Status::kInternal, "out of memory decoding JPEG");
    const Status status = err.code == JERR_BAD_PRECISION || err.code == JERR_NOT_COMPILED
                              ? Status::kUnsupported
                              : Status::kCorrupt;
    throw ImageError(status, std::string("JPEG: ") + err.message);
  }
};

// Adobe CMYK as Photoshop writes it (inverted), to RGB with Pillow's rounding.
void cmyk_to_rgbx(uint8_t* row, int width) {
  for (int x = 0; x < width; ++x) {
    uint8_t* p = row + 4 * x;
    const int k = p[3];
    for (int c = 0; c < 3; ++c) {
      const int t = (255 - p[c]) * k + 128;
      const int v = k - (((t >> 8) + t) >> 8);
      p[c] = uint8_t(v < 0 ? 0 : v);
    }
  }
}

bool read_header(JpegSession& s, const uint8_t* data, size_t size, bool save_exif) {
  if (setjmp(s.err.jump)) return false;
  jpeg_create_decompress(&s.cinfo);
  s.created = true;
  jpeg_mem_src(&s.cinfo, data, static_cast<unsigned long>(size));
  if (save_exif) jpeg_save_markers(&s.cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&s.cinfo, TRUE);
  return true;
}

// The last bytes, past any zero padding, are the EOI marker FF D9.
bool ends_with_eoi(const uint8_t* data, size_t size) {
  while (size > 2 && data[size - 1] == 0) --size;
  return size >= 2 && data[size - 2] == 0xFF && data[size - 1] == 0xD9;
}

struct DecodeState {
  const uint8_t* data;
  size_t size;
  Buffer* buffer;
  uint8_t* pixels;
  JDIMENSION x, width;
  int y, height;
  size_t stride;
  bool cmyk;
};

// Sampling layouts whose partial decode (jpeg_crop_scanline, jpeg_skip_scanlines) gives the full
// decode's pixels: the first component at the largest factors, at most 2, and every other one
// at the same factors or at 1x1 (4:4:4, 4:2:2, 4:4:0, 4:2:0, grayscale, CMYK). On others
// libjpeg-turbo can differ (the fuzzer found a chroma component sampled 4x taller than luma
// whose cropped, DCT-scaled rows did), so those files are decoded whole.
bool crops_exactly(const jpeg_decompress_struct& c) {
  const jpeg_component_info& first = c.comp_info[0];
  if (c.max_h_samp_factor > 2 || c.max_v_samp_factor > 2 ||
      first.h_samp_factor != c.max_h_samp_factor || first.v_samp_factor != c.max_v_samp_factor) {
    return false;
  }
  for (int i = 1; i < c.num_components; ++i) {
    const jpeg_component_info& comp = c.comp_info[i];
    const bool unit = comp.h_samp_factor == 1 && comp.v_samp_factor == 1;
    const bool same =
        comp.h_samp_factor == first.h_samp_factor && comp.v_samp_factor == first.v_samp_factor;
    if (!unit && !same) return false;
  }
  return true;
}

bool decode_rows(JpegSession& s, int scale_num, const Rect& region, FastEntropy* fast,
                 DecodeState& st) {
  if (setjmp(s.err.jump)) return false;
  jpeg_decompress_struct& c = s.cinfo;
  st.cmyk = c.jpeg_color_space == JCS_CMYK || c.jpeg_color_space == JCS_YCCK;
  c.out_color_space = st.cmyk ? JCS_CMYK : JCS_EXT_RGBX;
  c.scale_num = unsigned(scale_num);
  c.scale_denom = 8;
  jpeg_start_decompress(&c);
  if (fast != nullptr) install_fast_entropy(c, *fast, s.err.jump, s.err.redo_with_libjpeg);
  const int out_w = int(c.output_width), out_h = int(c.output_height);
  int x0 = region.x < 0 ? 0 : region.x, y0 = region.y < 0 ? 0 : region.y;
  int x1 = region.x + region.w > out_w ? out_w : region.x + region.w;
  int y1 = region.y + region.h > out_h ? out_h : region.y + region.h;
  if (x1 <= x0 || y1 <= y0) {
    x0 = y0 = 0;
    x1 = out_w;
    y1 = out_h;
  }
  if (!crops_exactly(c)) {
    // Rows below the region may still be left undecoded: stopping early changes no pixel.
    x0 = y0 = 0;
    x1 = out_w;
  }
  // Fancy upsampling at the edge of a cropped scanline differs from the full decode's, so the
  // crop reaches one iMCU column past the region on both sides. libjpeg smooths the blocks of an
  // incomplete progressive file from their neighbours two blocks away, which a crop cuts off like
  // the image's edge: there the crop reaches two columns further.
  const int margin = c.max_h_samp_factor * scale_num * (c.progressive_mode ? 3 : 1);
  x0 = x0 > margin ? x0 - margin : 0;
  x1 = x1 + margin < out_w ? x1 + margin : out_w;
  st.x = JDIMENSION(x0);
  st.width = JDIMENSION(x1 - x0);
  if (st.x != 0 || st.width != c.output_width) jpeg_crop_scanline(&c, &st.x, &st.width);
  st.y = y0;
  st.height = y1 - y0;
  st.stride = size_t(st.width) * 4;
  try {
    // One extra row receives the scanlines below the region (see the end of this function).
    st.pixels = st.buffer->reserve(st.stride * size_t(st.height + 1) + kBufferSlack);
  } catch (const std::bad_alloc&) {
    s.alloc_failed = true;
    return false;
  }
  if (y0 > 0) jpeg_skip_scanlines(&c, JDIMENSION(y0));
  while (int(c.output_scanline) < y1) {
    JSAMPROW rows[8];
    const int first = int(c.output_scanline) - y0;
    int n = y1 - int(c.output_scanline);
    if (n > 8) n = 8;
    for (int i = 0; i < n; ++i) rows[i] = st.pixels + size_t(first + i) * st.stride;
    jpeg_read_scanlines(&c, rows, JDIMENSION(n));
  }
  // A truncated file must fail the same way whatever part of it is kept. A file that ends with its
  // EOI marker was written to the end, so the rows below the region can be dropped unread;
  // otherwise they are decoded into a throwaway row (skipping to the end would not read them).
  if (c.output_scanline < c.output_height && ends_with_eoi(st.data, st.size)) {
    jpeg_abort_decompress(&c);
    return true;
  }
  JSAMPROW spare = st.pixels + size_t(st.height) * st.stride;
  while (c.output_scanline < c.output_height) jpeg_read_scanlines(&c, &spare, 1);
  jpeg_finish_decompress(&c);
  return true;
}

// False when stoker's entropy decoder (with `fast`) gave the image back to libjpeg.
bool decode_once(int scale_num, const Rect& region, FastEntropy* fast, DecodeState& st) {
  JpegSession s;
  if (!read_header(s, st.data, st.size, false)) s.fail();
  if (decode_rows(s, scale_num, region, fast, st)) return true;
  if (s.err.redo_with_libjpeg) return false;
  s.fail();
}

}  // namespace

ImageInfo jpeg_info(const uint8_t* data, size_t size) {
  JpegSession s;
  if (!read_header(s, data, size, true)) s.fail();
  ImageInfo info;
  info.format = ImageFormat::kJpeg;
  info.width = int(s.cinfo.image_width);
  info.height = int(s.cinfo.image_height);
  for (jpeg_saved_marker_ptr m = s.cinfo.marker_list; m != nullptr; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
        std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      info.orientation = parse_exif_orientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  return info;
}

PixelView jpeg_decode(const uint8_t* data, size_t size, int scale_num, const Rect& region,
                      Buffer& buffer) {
  // Its tables are too large for the stack of every thread that decodes.
  FastEntropy& fast = thread_fast_entropy();
  DecodeState st{};
  st.data = data;
  st.size = size;
  st.buffer = &buffer;
  if (!decode_once(scale_num, region, &fast, st)) decode_once(scale_num, region, nullptr, st);
  if (st.cmyk) {
    for (int y = 0; y < st.height; ++y)
      cmyk_to_rgbx(st.pixels + size_t(y) * st.stride, int(st.width));
  }
  PixelView view;
  view.data = st.pixels;
  view.width = int(st.width);
  view.height = st.height;
  view.stride = st.stride;
  view.origin_x = int(st.x);
  view.origin_y = st.y;
  return view;
}

}  // namespace stoker::detail
