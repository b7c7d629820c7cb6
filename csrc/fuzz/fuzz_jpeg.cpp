// JPEG decode: the header, whole and region decodes at full and at a reduced DCT scale, and the
// Preprocessor. stoker's entropy decoder promises libjpeg's exact pixels and errors, so every
// whole decode is compared with a plain libjpeg decode under the same error policy.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <vector>

// clang-format off
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

#include "image_target.hpp"

namespace {

using namespace stoker;
using namespace stoker::fuzz;

struct RefError {
  jpeg_error_mgr pub;
  jmp_buf jump;
};

void ref_error_exit(j_common_ptr cinfo) {
  std::longjmp(reinterpret_cast<RefError*>(cinfo->err)->jump, 1);
}

// stoker's policy: warnings are recovered from, except running out of data.
void ref_emit_message(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) ref_error_exit(cinfo);
}

struct RefImage {
  std::vector<uint8_t> rgbx;
  int width = 0;
  int height = 0;
  bool cmyk = false;
};

// The whole image at scale_num/8 through libjpeg alone; false where libjpeg fails. Only plain
// data lives across the setjmp, so a longjmp skips no destructor.
bool reference_decode(const uint8_t* data, size_t size, int scale_num, RefImage& out) {
  jpeg_decompress_struct c;
  RefError err;
  std::memset(&c, 0, sizeof(c));
  c.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = ref_error_exit;
  err.pub.emit_message = ref_emit_message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&c);
    return false;
  }
  jpeg_create_decompress(&c);
  jpeg_mem_src(&c, data, static_cast<unsigned long>(size));
  jpeg_read_header(&c, TRUE);
  out.cmyk = c.jpeg_color_space == JCS_CMYK || c.jpeg_color_space == JCS_YCCK;
  c.out_color_space = out.cmyk ? JCS_CMYK : JCS_EXT_RGBX;
  c.scale_num = unsigned(scale_num);
  c.scale_denom = 8;
  jpeg_start_decompress(&c);
  out.width = int(c.output_width);
  out.height = int(c.output_height);
  out.rgbx.resize(size_t(out.width) * size_t(out.height) * 4);
  while (c.output_scanline < c.output_height) {
    JSAMPROW row = out.rgbx.data() + size_t(c.output_scanline) * size_t(out.width) * 4;
    jpeg_read_scanlines(&c, &row, 1);
  }
  jpeg_finish_decompress(&c);
  jpeg_destroy_decompress(&c);
  return true;
}

// The 4th byte of an RGBX pixel is unspecified, so only the first three are compared.
bool same_rgb(const uint8_t* a, const uint8_t* b) { return std::memcmp(a, b, 3) == 0; }

const uint8_t* pixel(const PixelView& v, int x, int y) {
  return v.data + size_t(y - v.origin_y) * v.stride + size_t(x - v.origin_x) * 4;
}

void check_scale(const ImageInput& in, const ImageInfo& info, int scale, Status full_status) {
  const int sw = scaled_size(info.width, scale), sh = scaled_size(info.height, scale);
  Buffer whole_buffer;
  Status whole_status;
  const auto whole = decode(in, info, scale, Rect{0, 0, sw, sh}, whole_buffer, whole_status);
  if (scale == 8) FUZZ_CHECK(whole_status == full_status);
  if (whole) FUZZ_CHECK(whole->width == sw && whole->height == sh);

  RefImage ref;
  const bool ref_ok = reference_decode(in.image, in.size, scale, ref);
  FUZZ_CHECK(ref_ok == whole.has_value());
  if (whole && !ref.cmyk) {
    FUZZ_CHECK(ref.width == sw && ref.height == sh);
    for (int y = 0; y < sh; ++y) {
      for (int x = 0; x < sw; ++x) {
        FUZZ_CHECK(same_rgb(pixel(*whole, x, y), &ref.rgbx[(size_t(y) * size_t(sw) + x) * 4]));
      }
    }
  }

  // A region decode succeeds where the whole decode does and shows the same pixels. It may
  // succeed where the whole decode fails: rows below the region of a file that ends with its EOI
  // marker are not decoded.
  const Rect region = region_from(in.params, sw, sh);
  Buffer region_buffer;
  Status region_status;
  const auto part = decode(in, info, scale, region, region_buffer, region_status);
  if (whole) {
    FUZZ_CHECK(part.has_value());
    for (int y = region.y; y < region.y + region.h; ++y) {
      for (int x = region.x; x < region.x + region.w; ++x) {
        FUZZ_CHECK(same_rgb(pixel(*part, x, y), pixel(*whole, x, y)));
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kParamBytes) return 0;
  const ImageInput in{data, data + kParamBytes, size - kParamBytes};
  if (sniff_format(in.image, in.size) != ImageFormat::kJpeg) return 0;
  Status full_status;
  const auto info = check_image(in, full_status);
  if (!info) return 0;
  check_scale(in, *info, 8, full_status);
  if (in.scale() != 8) check_scale(in, *info, in.scale(), full_status);
  return 0;
}
