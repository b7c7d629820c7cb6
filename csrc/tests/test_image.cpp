// Format sniffing, headers, EXIF orientation, full decodes and JPEG region decodes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/image.hpp"
#include "core/status.hpp"
#include "test_util.hpp"

// clang-format off
#include <jpeglib.h>
#include <jerror.h>
#include "core/jpeg_entropy.hpp"
// clang-format on

namespace stoker {
namespace {

using test::Bytes;
using test::Image;
using test::JpegOptions;
using test::PngKind;
using test::Sampling;

const char* sampling_name(Sampling s) {
  switch (s) {
    case Sampling::k420:
      return "420";
    case Sampling::k422:
      return "422";
    case Sampling::k444:
      return "444";
    case Sampling::kGray:
      return "gray";
  }
  return "?";
}

// Compares two RGB images of the same size exactly; reports the count and the first mismatch.
::testing::AssertionResult same_rgb(const Image& got, const Image& want) {
  if (got.width != want.width || got.height != want.height) {
    return ::testing::AssertionFailure() << "size " << got.width << "x" << got.height
                                         << ", expected " << want.width << "x" << want.height;
  }
  size_t mismatches = 0;
  int fx = -1, fy = -1;
  for (int y = 0; y < want.height; ++y) {
    for (int x = 0; x < want.width; ++x) {
      if (std::memcmp(got.at(x, y), want.at(x, y), 3) != 0) {
        if (mismatches++ == 0) {
          fx = x;
          fy = y;
        }
      }
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  const uint8_t* g = got.at(fx, fy);
  const uint8_t* w = want.at(fx, fy);
  return ::testing::AssertionFailure()
         << mismatches << " pixels differ; first at (" << fx << "," << fy << "): got (" << int(g[0])
         << "," << int(g[1]) << "," << int(g[2]) << "), expected (" << int(w[0]) << "," << int(w[1])
         << "," << int(w[2]) << ")";
}

Image rgb_from(const std::vector<uint8_t>& packed, int w, int h) {
  Image img(w, h, 3);
  if (packed.size() == img.px.size()) img.px = packed;
  return img;
}

Image decode(const Bytes& data, ImageInfo* info = nullptr) {
  ImageInfo local;
  std::vector<uint8_t> rgb = decode_rgb(data.data(), data.size(), kDefaultMaxPixels, &local);
  if (info) *info = local;
  EXPECT_EQ(rgb.size(), size_t(local.oriented_width()) * size_t(local.oriented_height()) * 3);
  return rgb_from(rgb, local.oriented_width(), local.oriented_height());
}

// sniff_format / read_info ------------------------------------------------------------------------

TEST(Sniff, RecognizesGeneratedImages) {
  const Image rgb = test::make_rgb(33, 17, 1);
  const Bytes jpeg = test::encode_jpeg(rgb, {});
  const Bytes png = test::encode_png(rgb, PngKind::kRgb8, false).data;
  EXPECT_EQ(sniff_format(jpeg.data(), jpeg.size()), ImageFormat::kJpeg);
  EXPECT_EQ(sniff_format(png.data(), png.size()), ImageFormat::kPng);
#ifdef STOKER_HAVE_WEBP
  const Bytes webp = test::encode_webp(rgb, false);
  EXPECT_EQ(sniff_format(webp.data(), webp.size()), ImageFormat::kWebp);
#endif
}

TEST(Sniff, RejectsOtherData) {
  EXPECT_EQ(sniff_format(nullptr, 0), ImageFormat::kUnknown);
  const Bytes gif = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0, 0, 0};
  EXPECT_EQ(sniff_format(gif.data(), gif.size()), ImageFormat::kUnknown);
  const Bytes wave = {'R', 'I', 'F', 'F', 4, 0, 0, 0, 'W', 'A', 'V', 'E', 0, 0, 0, 0};
  EXPECT_EQ(sniff_format(wave.data(), wave.size()), ImageFormat::kUnknown);
  const Bytes text = {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!'};
  EXPECT_EQ(sniff_format(text.data(), text.size()), ImageFormat::kUnknown);
  // Magic numbers cut short are not images either (and must not be read past their end).
  const Bytes png_sig = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a};
  EXPECT_EQ(sniff_format(png_sig.data(), png_sig.size()), ImageFormat::kUnknown);
  const Bytes riff = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B'};
  EXPECT_EQ(sniff_format(riff.data(), riff.size()), ImageFormat::kUnknown);
  for (ImageFormat f :
       {ImageFormat::kUnknown, ImageFormat::kJpeg, ImageFormat::kPng, ImageFormat::kWebp}) {
    ASSERT_NE(format_name(f), nullptr);
    EXPECT_GT(std::strlen(format_name(f)), 0u);
  }
  EXPECT_STREQ(format_name(ImageFormat::kJpeg), "jpeg");
  EXPECT_STREQ(format_name(ImageFormat::kPng), "png");
  EXPECT_STREQ(format_name(ImageFormat::kWebp), "webp");
}

TEST(ReadInfo, JpegDimensionsAndOrientation) {
  const Image rgb = test::make_rgb(71, 45, 2);
  for (bool little : {false, true}) {
    for (int orientation = 0; orientation <= 8; ++orientation) {
      SCOPED_TRACE(testing::Message() << "orientation " << orientation << " little " << little);
      JpegOptions o;
      o.orientation = orientation;
      o.exif_little_endian = little;
      const Bytes jpeg = test::encode_jpeg(rgb, o);
      const ImageInfo info = read_info(jpeg.data(), jpeg.size(), kDefaultMaxPixels);
      EXPECT_EQ(info.format, ImageFormat::kJpeg);
      EXPECT_EQ(info.width, 71);
      EXPECT_EQ(info.height, 45);
      const int expect = orientation == 0 ? 1 : orientation;
      EXPECT_EQ(info.orientation, expect);
      EXPECT_EQ(info.oriented_width(), expect >= 5 ? 45 : 71);
      EXPECT_EQ(info.oriented_height(), expect >= 5 ? 71 : 45);
    }
  }
}

TEST(ReadInfo, PngKinds) {
  const Image rgb = test::make_rgb(29, 40, 3);
  for (PngKind kind : {PngKind::kRgb8, PngKind::kRgba8, PngKind::kGray8, PngKind::kGrayAlpha8,
                       PngKind::kPalette8, PngKind::kRgb16, PngKind::kGray16, PngKind::kGray1}) {
    SCOPED_TRACE(test::png_kind_name(kind));
    const Bytes png = test::encode_png(rgb, kind, false).data;
    const ImageInfo info = read_info(png.data(), png.size(), kDefaultMaxPixels);
    EXPECT_EQ(info.format, ImageFormat::kPng);
    EXPECT_EQ(info.width, 29);
    EXPECT_EQ(info.height, 40);
    EXPECT_EQ(info.orientation, 1);
  }
}

TEST(ReadInfo, PngExifOrientation) {
  const Image rgb = test::make_rgb(30, 20, 4);
  const Bytes png =
      test::encode_png(rgb, PngKind::kRgb8, false, test::make_exif_tiff(6, false)).data;
  const ImageInfo info = read_info(png.data(), png.size(), kDefaultMaxPixels);
  EXPECT_EQ(info.orientation, 6);
  EXPECT_EQ(info.oriented_width(), 20);
  EXPECT_EQ(info.oriented_height(), 30);
}

#ifdef STOKER_HAVE_WEBP
TEST(ReadInfo, Webp) {
  const Image rgb = test::make_rgb(37, 23, 5);
  for (bool lossless : {false, true}) {
    const Bytes webp = test::encode_webp(rgb, lossless);
    const ImageInfo info = read_info(webp.data(), webp.size(), kDefaultMaxPixels);
    EXPECT_EQ(info.format, ImageFormat::kWebp);
    EXPECT_EQ(info.width, 37);
    EXPECT_EQ(info.height, 23);
    EXPECT_EQ(info.orientation, 1);
    for (int orientation = 1; orientation <= 8; ++orientation) {
      SCOPED_TRACE(testing::Message() << "lossless " << lossless << " orientation " << orientation);
      const Bytes ext =
          test::webp_with_exif(webp, 37, 23, test::make_exif_tiff(orientation, orientation % 2));
      const ImageInfo e = read_info(ext.data(), ext.size(), kDefaultMaxPixels);
      EXPECT_EQ(e.format, ImageFormat::kWebp);
      EXPECT_EQ(e.width, 37);
      EXPECT_EQ(e.height, 23);
      EXPECT_EQ(e.orientation, orientation);
    }
  }
}
#endif

TEST(ReadInfo, Errors) {
  const Bytes empty;
  try {
    read_info(empty.data(), 0, kDefaultMaxPixels);
    ADD_FAILURE() << "no error for empty input";
  } catch (const ImageError& e) {
    EXPECT_EQ(e.status(), Status::kEmpty);
  }
  const Bytes garbage = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  try {
    read_info(garbage.data(), garbage.size(), kDefaultMaxPixels);
    ADD_FAILURE() << "no error for garbage";
  } catch (const ImageError& e) {
    EXPECT_EQ(e.status(), Status::kUnsupported);
    EXPECT_STRNE(e.what(), "");
  }
  const Bytes jpeg = test::encode_jpeg(test::make_rgb(64, 48, 6), {});
  try {
    read_info(jpeg.data(), jpeg.size(), 64 * 48 - 1);
    ADD_FAILURE() << "no error over max_pixels";
  } catch (const ImageError& e) {
    EXPECT_EQ(e.status(), Status::kTooLarge);
  }
  EXPECT_NO_THROW(read_info(jpeg.data(), jpeg.size(), 64 * 48));
  // Only the start of a JPEG: the header cannot be read.
  try {
    read_info(jpeg.data(), 20, kDefaultMaxPixels);
    ADD_FAILURE() << "no error for a cut header";
  } catch (const ImageError& e) {
    EXPECT_EQ(e.status(), Status::kCorrupt);
  }
}

// parse_exif_orientation ---------------------------------------------------------------------

int parse(const Bytes& b) {
  // An exact-size heap copy, so AddressSanitizer sees any read past the end.
  std::vector<uint8_t> copy(b);
  return parse_exif_orientation(copy.empty() ? nullptr : copy.data(), copy.size());
}

TEST(Exif, BothByteOrdersAndTypes) {
  for (bool little : {false, true}) {
    for (bool as_long : {false, true}) {
      for (int o = 1; o <= 8; ++o) {
        EXPECT_EQ(parse(test::make_exif_tiff(o, little, as_long)), o)
            << "little " << little << " long " << as_long;
      }
      EXPECT_EQ(parse(test::make_exif_tiff(0, little, as_long)), 1);
      EXPECT_EQ(parse(test::make_exif_tiff(9, little, as_long)), 1);
      EXPECT_EQ(parse(test::make_exif_tiff(0xFFFF, little, as_long)), 1);
    }
  }
}

TEST(Exif, MissingOrMalformed) {
  EXPECT_EQ(parse_exif_orientation(nullptr, 0), 1);
  EXPECT_EQ(parse({}), 1);
  EXPECT_EQ(parse({'M', 'M'}), 1);
  // Bad byte order marks and a bad magic number.
  Bytes t = test::make_exif_tiff(6, false);
  t[0] = 'I';
  EXPECT_EQ(parse(t), 1);
  t = test::make_exif_tiff(6, true);
  t[0] = t[1] = 'X';
  EXPECT_EQ(parse(t), 1);
  t = test::make_exif_tiff(6, false);
  t[3] = 43;
  EXPECT_EQ(parse(t), 1);
  // An IFD without the orientation tag.
  t = test::make_exif_tiff(6, false);
  t[22] = 0x01;
  t[23] = 0x13;  // tag 0x0112 -> 0x0113
  EXPECT_EQ(parse(t), 1);
}

TEST(Exif, EveryTruncationIsSafe) {
  for (bool little : {false, true}) {
    const Bytes full = test::make_exif_tiff(8, little);
    // The orientation entry ends at byte 8 + 2 + 12 + 12.
    for (size_t n = 0; n < full.size(); ++n) {
      const Bytes cut(full.begin(), full.begin() + ptrdiff_t(n));
      const int o = parse(cut);
      if (n < 8 + 2 + 24) {
        EXPECT_EQ(o, 1) << "length " << n;
      } else {
        EXPECT_EQ(o, 8) << "length " << n;
      }
    }
  }
}

TEST(Exif, OffsetsOutsideAndHugeCounts) {
  for (bool little : {false, true}) {
    auto put32 = [&](Bytes& b, size_t at, uint32_t v) {
      for (int i = 0; i < 4; ++i) {
        b[at + size_t(i)] = little ? uint8_t(v >> (8 * i)) : uint8_t(v >> (8 * (3 - i)));
      }
    };
    auto put16 = [&](Bytes& b, size_t at, uint32_t v) {
      b[at] = little ? uint8_t(v) : uint8_t(v >> 8);
      b[at + 1] = little ? uint8_t(v >> 8) : uint8_t(v);
    };
    const Bytes base = test::make_exif_tiff(3, little);
    for (uint32_t ifd :
         {uint32_t(base.size()), uint32_t(base.size() - 1), uint32_t(base.size() + 1), 0x7FFFFFFFu,
          0x80000000u, 0xFFFFFFFFu, 0xFFFFFFF8u}) {
      Bytes t = base;
      put32(t, 4, ifd);
      EXPECT_EQ(parse(t), 1) << "ifd offset " << ifd;
    }
    // An IFD offset just two bytes before the end: the count is readable, the entries are not.
    {
      Bytes t = base;
      put32(t, 4, uint32_t(t.size() - 2));
      EXPECT_EQ(parse(t), 1);
    }
    for (uint32_t count : {0u, 3u, 100u, 0x7FFFu, 0xFFFFu}) {
      Bytes t = base;
      put16(t, 8, count);
      // The orientation entry is the second one: found when count >= 2 (the data stays in bounds).
      const int o = parse(t);
      if (count == 0) {
        EXPECT_EQ(o, 1);
      } else {
        EXPECT_TRUE(o == 1 || o == 3) << "count " << count << " gave " << o;
      }
    }
    {
      // A huge count with no orientation entry: the walk must stop at the end of the data.
      Bytes t = base;
      put16(t, 8, 0xFFFF);
      put16(t, 22, 0x0113);
      EXPECT_EQ(parse(t), 1);
    }
    {
      // Orientation tag with an unexpected type.
      Bytes t = base;
      put16(t, 24, 7);  // UNDEFINED
      const int o = parse(t);
      EXPECT_GE(o, 1);
      EXPECT_LE(o, 8);
    }
  }
}

TEST(Exif, RandomBlobsNeverReadOutOfBounds) {
  test::Rng rng(12345);
  for (int i = 0; i < 3000; ++i) {
    Bytes t = test::make_exif_tiff(rng.range(1, 8), rng.chance(0.5), rng.chance(0.3));
    const int edits = rng.range(1, 4);
    for (int e = 0; e < edits; ++e) t[rng.below(t.size())] = rng.byte();
    if (rng.chance(0.3)) t.resize(rng.below(t.size() + 1));
    const int o = parse(t);
    EXPECT_GE(o, 1);
    EXPECT_LE(o, 8);
  }
}

// decode_rgb ------------------------------------------------------------------------------------

struct JpegCase {
  int w, h;
  JpegOptions options;
};

std::vector<JpegCase> jpeg_cases() {
  std::vector<JpegCase> cases;
  int i = 0;
  for (Sampling s : {Sampling::k420, Sampling::k422, Sampling::k444, Sampling::kGray}) {
    for (bool progressive : {false, true}) {
      JpegOptions o;
      o.sampling = s;
      o.progressive = progressive;
      o.quality = 70 + 7 * i;
      cases.push_back({i % 2 ? 203 : 160, i % 3 ? 117 : 96, o});
      ++i;
    }
  }
  JpegOptions arith;
  arith.arithmetic = true;
  cases.push_back({97, 61, arith});
  JpegOptions restart;
  restart.restart_rows = 1;
  restart.sampling = Sampling::k420;
  cases.push_back({130, 75, restart});
  return cases;
}

std::string describe(const JpegCase& c) {
  return std::to_string(c.w) + "x" + std::to_string(c.h) + " " + sampling_name(c.options.sampling) +
         (c.options.progressive ? " progressive" : "") +
         (c.options.arithmetic ? " arithmetic" : "") + (c.options.restart_rows ? " restart" : "") +
         " q" + std::to_string(c.options.quality);
}

TEST(DecodeRgb, JpegMatchesLibjpegExactly) {
  for (const JpegCase& c : jpeg_cases()) {
    SCOPED_TRACE(describe(c));
    const Bytes jpeg = test::encode_jpeg(test::make_rgb(c.w, c.h, uint64_t(c.w * c.h)), c.options);
    const Image ref = test::reference_jpeg_decode(jpeg);
    ImageInfo info;
    const Image got = decode(jpeg, &info);
    EXPECT_EQ(info.format, ImageFormat::kJpeg);
    EXPECT_EQ(info.width, c.w);
    EXPECT_EQ(info.height, c.h);
    EXPECT_TRUE(same_rgb(got, ref));
  }
}

// A decoding thread keeps the Huffman tables it built while the next image's are the same:
// images with the standard tables and with tables fitted to each image, in turn on one thread,
// must each decode exactly as libjpeg decodes them.
TEST(DecodeRgb, JpegHuffmanTablesChangingBetweenImages) {
  test::JpegOptions fitted;
  fitted.optimize_huffman = true;
  test::JpegOptions full_chroma;
  full_chroma.sampling = test::Sampling::k444;
  const uint64_t handed_back = detail::thread_fast_entropy_handed_back();
  for (int round = 0; round < 3; ++round) {
    for (const test::JpegOptions& options : {test::JpegOptions{}, fitted, full_chroma, fitted}) {
      const uint64_t seed = uint64_t(round * 7 + options.optimize_huffman);
      const Bytes jpeg = test::encode_jpeg(test::make_rgb(64 + round * 8, 48, seed), options);
      EXPECT_TRUE(same_rgb(decode(jpeg), test::reference_jpeg_decode(jpeg)))
          << "round " << round << (options.optimize_huffman ? " fitted" : " standard");
    }
  }
  // stoker's decoder did the work: a stale table would have sent images back to libjpeg.
  EXPECT_EQ(detail::thread_fast_entropy_handed_back(), handed_back);
}

TEST(DecodeRgb, JpegOrientations) {
  for (Sampling s : {Sampling::k420, Sampling::k444}) {
    const Image rgb = test::make_rgb(57, 34, 9);
    JpegOptions plain;
    plain.sampling = s;
    const Image ref = test::reference_jpeg_decode(test::encode_jpeg(rgb, plain));
    for (int o = 1; o <= 8; ++o) {
      for (bool little : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << sampling_name(s) << " orientation " << o << " little " << little);
        JpegOptions opt = plain;
        opt.orientation = o;
        opt.exif_little_endian = little;
        ImageInfo info;
        const Image got = decode(test::encode_jpeg(rgb, opt), &info);
        EXPECT_EQ(info.orientation, o);
        EXPECT_EQ(info.width, 57);  // as stored
        EXPECT_EQ(info.height, 34);
        EXPECT_TRUE(same_rgb(got, test::apply_orientation(ref, o)));
      }
    }
  }
}

// docs/preprocessing.md: CMYK/YCCK converted as Pillow does, R = K' * C' / 255 on the stored
// (Adobe-inverted) values.
TEST(DecodeRgb, CmykAndYcckJpeg) {
  const Image rgb = test::make_rgb(47, 29, 15);
  Image cmyk(47, 29, 4);
  for (int y = 0; y < 29; ++y) {
    for (int x = 0; x < 47; ++x) {
      const uint8_t* p = rgb.at(x, y);
      uint8_t* q = cmyk.at(x, y);
      q[0] = p[0];
      q[1] = p[1];
      q[2] = p[2];
      q[3] = uint8_t(255 - (x * 3 + y * 2) % 160);
    }
  }
  for (bool ycck : {false, true}) {
    SCOPED_TRACE(ycck ? "YCCK" : "CMYK");
    const Bytes jpeg = test::encode_jpeg_cmyk(cmyk, ycck);
    const Image stored = test::reference_jpeg_decode_cmyk(jpeg);
    const Image got = decode(jpeg);
    ASSERT_EQ(got.width, 47);
    ASSERT_EQ(got.height, 29);
    int worst = 0;
    for (int y = 0; y < 29; ++y) {
      for (int x = 0; x < 47; ++x) {
        const uint8_t* s = stored.at(x, y);
        for (int c = 0; c < 3; ++c) {
          const double want = double(s[c]) * double(s[3]) / 255.0;
          worst = std::max(worst, int(std::ceil(std::abs(double(got.at(x, y)[c]) - want) - 1e-9)));
        }
      }
    }
    EXPECT_LE(worst, 1) << "max difference from K' * C' / 255";
  }
}

TEST(DecodeRgb, PngKindsExact) {
  const Image rgb = test::make_rgb(45, 31, 10);
  for (PngKind kind : {PngKind::kRgb8, PngKind::kRgba8, PngKind::kGray8, PngKind::kGrayAlpha8,
                       PngKind::kPalette8, PngKind::kRgb16, PngKind::kGray16, PngKind::kGray1}) {
    for (bool interlaced : {false, true}) {
      SCOPED_TRACE(testing::Message() << test::png_kind_name(kind) << " interlaced " << interlaced);
      const test::PngImage png = test::encode_png(rgb, kind, interlaced);
      ImageInfo info;
      const Image got = decode(png.data, &info);
      EXPECT_EQ(info.format, ImageFormat::kPng);
      EXPECT_TRUE(same_rgb(got, png.expected));
    }
  }
}

TEST(DecodeRgb, PngOrientation) {
  const Image rgb = test::make_rgb(26, 19, 11);
  for (int o = 1; o <= 8; ++o) {
    SCOPED_TRACE(testing::Message() << "orientation " << o);
    const test::PngImage png =
        test::encode_png(rgb, PngKind::kRgb8, false, test::make_exif_tiff(o, o % 2 == 0));
    ImageInfo info;
    const Image got = decode(png.data, &info);
    EXPECT_EQ(info.orientation, o);
    EXPECT_TRUE(same_rgb(got, test::apply_orientation(png.expected, o)));
  }
}

#ifdef STOKER_HAVE_WEBP
TEST(DecodeRgb, WebpMatchesLibwebp) {
  const Image rgb = test::make_rgb(53, 38, 12);
  const Bytes lossless = test::encode_webp(rgb, true);
  EXPECT_TRUE(same_rgb(decode(lossless), rgb)) << "lossless WebP must round-trip exactly";
  const Bytes lossy = test::encode_webp(rgb, false, 75);
  EXPECT_TRUE(same_rgb(decode(lossy), test::reference_webp_decode(lossy)));
  for (int o = 1; o <= 8; ++o) {
    SCOPED_TRACE(testing::Message() << "orientation " << o);
    const Bytes ext = test::webp_with_exif(lossless, 53, 38, test::make_exif_tiff(o, false));
    ImageInfo info;
    const Image got = decode(ext, &info);
    EXPECT_EQ(info.orientation, o);
    EXPECT_TRUE(same_rgb(got, test::apply_orientation(rgb, o)));
  }
}
#endif

// decode_region -----------------------------------------------------------------------------------

// Checks that `view` covers `r` and that each pixel of `r` equals `ref` there.
::testing::AssertionResult region_matches(const PixelView& view, const Rect& r, const Image& ref) {
  if (view.data == nullptr || view.origin_x > r.x || view.origin_y > r.y ||
      view.origin_x + view.width < r.x + r.w || view.origin_y + view.height < r.y + r.h ||
      view.stride < size_t(view.width) * 4) {
    return ::testing::AssertionFailure()
           << "view " << view.width << "x" << view.height << "+" << view.origin_x << "+"
           << view.origin_y << " stride " << view.stride << " does not cover region " << r.w << "x"
           << r.h << "+" << r.x << "+" << r.y;
  }
  size_t mismatches = 0;
  int fx = -1, fy = -1;
  for (int y = r.y; y < r.y + r.h; ++y) {
    const uint8_t* row = view.data + size_t(y - view.origin_y) * view.stride;
    for (int x = r.x; x < r.x + r.w; ++x) {
      if (std::memcmp(row + size_t(x - view.origin_x) * 4, ref.at(x, y), 3) != 0 &&
          mismatches++ == 0) {
        fx = x;
        fy = y;
      }
    }
  }
  if (mismatches == 0) return ::testing::AssertionSuccess();
  const uint8_t* g =
      view.data + size_t(fy - view.origin_y) * view.stride + size_t(fx - view.origin_x) * 4;
  const uint8_t* w = ref.at(fx, fy);
  return ::testing::AssertionFailure()
         << mismatches << " of " << r.w * r.h << " pixels of region " << r.w << "x" << r.h << "+"
         << r.x << "+" << r.y << " differ from the full decode; first at (" << fx << "," << fy
         << "): got (" << int(g[0]) << "," << int(g[1]) << "," << int(g[2]) << "), expected ("
         << int(w[0]) << "," << int(w[1]) << "," << int(w[2]) << ")";
}

std::vector<Rect> regions_for(int w, int h, uint64_t seed) {
  std::vector<Rect> rs = {
      {0, 0, w, h},         {0, 0, 1, 1},
      {w - 1, h - 1, 1, 1}, {w - 1, 0, 1, h},
      {0, h - 1, w, 1},     {w / 2, h / 2, 1, 1},
      {0, 0, w / 2, h / 2}, {w / 2, h / 2, w - w / 2, h - h / 2},
      {1, 1, w - 2, h - 2},
  };
  // Off the MCU grid (8 and 16) in every way, narrow strips and single pixels.
  for (int v : {7, 8, 9, 15, 16, 17, 31, 33}) {
    if (v < w && v < h) {
      rs.push_back({v, v, std::min(w - v, 13), std::min(h - v, 11)});
      rs.push_back({v, 0, 1, h});
      rs.push_back({0, v, w, 1});
      rs.push_back({v, v, 1, 1});
    }
  }
  test::Rng rng(seed);
  for (int i = 0; i < 24; ++i) {
    Rect r;
    r.x = rng.range(0, w - 1);
    r.y = rng.range(0, h - 1);
    r.w = rng.range(1, w - r.x);
    r.h = rng.range(1, h - r.y);
    rs.push_back(r);
  }
  for (Rect& r : rs) {
    r.w = std::max(r.w, 1);
    r.h = std::max(r.h, 1);
  }
  return rs;
}

TEST(DecodeRegion, JpegFullScaleRegionsEqualFullDecode) {
  std::vector<JpegCase> cases = jpeg_cases();
  JpegOptions oriented;
  oriented.orientation = 6;
  cases.push_back({150, 99, oriented});  // regions are in stored coordinates whatever the EXIF says
  for (const JpegCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const Bytes jpeg = test::encode_jpeg(test::make_rgb(c.w, c.h, uint64_t(c.w + c.h)), c.options);
    const Image ref = test::reference_jpeg_decode(jpeg);
    const ImageInfo info = read_info(jpeg.data(), jpeg.size(), kDefaultMaxPixels);
    Buffer buffer;  // reused across regions, as the pipeline does
    for (const Rect& r : regions_for(c.w, c.h, uint64_t(c.w))) {
      const PixelView v = decode_region(jpeg.data(), jpeg.size(), info, 8, r, buffer);
      EXPECT_TRUE(region_matches(v, r, ref));
    }
  }
}

TEST(DecodeRegion, JpegScaledRegionsEqualScaledDecode) {
  std::vector<JpegCase> cases;
  for (Sampling s : {Sampling::k420, Sampling::k444, Sampling::kGray}) {
    JpegOptions o;
    o.sampling = s;
    cases.push_back({211, 131, o});
  }
  JpegOptions prog;
  prog.progressive = true;
  cases.push_back({190, 140, prog});
  for (const JpegCase& c : cases) {
    const Bytes jpeg = test::encode_jpeg(test::make_rgb(c.w, c.h, 99), c.options);
    const ImageInfo info = read_info(jpeg.data(), jpeg.size(), kDefaultMaxPixels);
    Buffer buffer;
    for (int k = 1; k < 8; ++k) {
      SCOPED_TRACE(describe(c) + " scale " + std::to_string(k) + "/8");
      const Image ref = test::reference_jpeg_decode(jpeg, k);
      EXPECT_EQ(scaled_size(c.w, k), ref.width);
      EXPECT_EQ(scaled_size(c.h, k), ref.height);
      std::vector<Rect> rs = regions_for(ref.width, ref.height, uint64_t(k));
      rs.resize(std::min<size_t>(rs.size(), 30));
      for (const Rect& r : rs) {
        const PixelView v = decode_region(jpeg.data(), jpeg.size(), info, k, r, buffer);
        EXPECT_TRUE(region_matches(v, r, ref));
      }
    }
  }
}

TEST(DecodeRegion, PngAndWebpRegions) {
  const Image rgb = test::make_rgb(41, 27, 13);
  std::vector<std::pair<std::string, std::pair<Bytes, Image>>> images;
  const test::PngImage png = test::encode_png(rgb, PngKind::kRgba8, true);
  images.push_back({"png", {png.data, png.expected}});
#ifdef STOKER_HAVE_WEBP
  images.push_back({"webp", {test::encode_webp(rgb, true), rgb}});
#endif
  for (const auto& [name, item] : images) {
    SCOPED_TRACE(name);
    const ImageInfo info = read_info(item.first.data(), item.first.size(), kDefaultMaxPixels);
    Buffer buffer;
    for (const Rect& r : regions_for(41, 27, 5)) {
      const PixelView v = decode_region(item.first.data(), item.first.size(), info, 8, r, buffer);
      EXPECT_TRUE(region_matches(v, r, item.second));
    }
  }
}

// libjpeg alone at scale_num/8 with the core's policy (running out of data is an error, other
// warnings are not): RGBX rows, or false on an error.
struct LibjpegFailure {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
};

[[noreturn]] void libjpeg_fail(j_common_ptr c) {
  std::longjmp(reinterpret_cast<LibjpegFailure*>(c->err)->jump, 1);
}

void libjpeg_warn(j_common_ptr c, int level) {
  if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) libjpeg_fail(c);
}

bool libjpeg_rgbx(const Bytes& data, int scale_num, jpeg_decompress_struct& d, Image& out) {
  if (setjmp(reinterpret_cast<LibjpegFailure*>(d.err)->jump)) return false;
  jpeg_mem_src(&d, data.data(), static_cast<unsigned long>(data.size()));
  jpeg_read_header(&d, TRUE);
  d.out_color_space = JCS_EXT_RGBX;
  d.scale_num = unsigned(scale_num);
  d.scale_denom = 8;
  jpeg_start_decompress(&d);
  out = Image(int(d.output_width), int(d.output_height), 4);
  while (d.output_scanline < d.output_height) {
    JSAMPROW row = out.at(0, int(d.output_scanline));
    jpeg_read_scanlines(&d, &row, 1);
  }
  jpeg_finish_decompress(&d);
  return true;
}

// The core decodes well-formed entropy-coded data itself and leaves anything else to libjpeg:
// damaged scans (the file still ending with its EOI marker) must give libjpeg's pixels or fail
// where libjpeg fails, at full and reduced scale.
TEST(DecodeRegion, DamagedJpegScansDecodeAsLibjpeg) {
  JpegOptions restart;
  restart.restart_rows = 1;
  for (const JpegOptions& options : {JpegOptions{}, restart}) {
    const Bytes good = test::encode_jpeg(test::make_rgb(97, 75, 5), options);
    size_t scan = 0;  // the first byte after the SOS segment
    for (size_t i = 2; i + 3 < good.size(); ++i) {
      if (good[i] == 0xFF && good[i + 1] == 0xDA) {
        scan = i + 2 + (size_t(good[i + 2]) << 8 | good[i + 3]);
        break;
      }
    }
    ASSERT_GT(scan, 0u);
    test::Rng rng(options.restart_rows + 1);
    int damaged = 0;  // decodes whose pixels the mutation changed
    for (int m = 0; m < 150; ++m) {
      Bytes data = good;
      for (int n = rng.range(1, 3); n > 0; --n)
        data[scan + rng.below(data.size() - 2 - scan)] = uint8_t(rng.below(256));
      for (int k : {8, 2}) {
        SCOPED_TRACE("mutation " + std::to_string(m) + (options.restart_rows ? " restart" : "") +
                     " scale " + std::to_string(k) + "/8");
        jpeg_decompress_struct d;
        LibjpegFailure err;
        d.err = jpeg_std_error(&err.pub);
        err.pub.error_exit = libjpeg_fail;
        err.pub.emit_message = libjpeg_warn;
        jpeg_create_decompress(&d);
        Image want, intact;
        const bool want_ok = libjpeg_rgbx(data, k, d, want);
        jpeg_destroy_decompress(&d);
        jpeg_create_decompress(&d);
        ASSERT_TRUE(libjpeg_rgbx(good, k, d, intact));
        jpeg_destroy_decompress(&d);
        if (!want_ok || want.px != intact.px) ++damaged;
        Buffer buffer;
        try {
          const ImageInfo info = read_info(data.data(), data.size(), kDefaultMaxPixels);
          const Rect all{0, 0, scaled_size(info.width, k), scaled_size(info.height, k)};
          const PixelView v = decode_region(data.data(), data.size(), info, k, all, buffer);
          ASSERT_TRUE(want_ok) << "decoded where libjpeg fails";
          EXPECT_TRUE(region_matches(v, all, want));
        } catch (const ImageError& e) {
          EXPECT_FALSE(want_ok) << "failed where libjpeg decodes: " << e.what();
        }
      }
    }
    EXPECT_GT(damaged, 200);
  }
}

TEST(DecodeRgb, ErrorsCarryStatus) {
  const Bytes jpeg = test::encode_jpeg(test::make_rgb(80, 60, 14), {});
  const Bytes png = test::encode_png(test::make_rgb(80, 60, 14), PngKind::kRgb8, false).data;
  struct Case {
    std::string name;
    Bytes data;
    Status status;
  };
  std::vector<Case> cases = {
      {"empty", {}, Status::kEmpty},
      {"garbage", Bytes(100, 0x42), Status::kUnsupported},
      {"jpeg 60%", Bytes(jpeg.begin(), jpeg.begin() + ptrdiff_t(jpeg.size() * 6 / 10)),
       Status::kCorrupt},
      {"jpeg without EOI", Bytes(jpeg.begin(), jpeg.end() - 40), Status::kCorrupt},
      {"png 60%", Bytes(png.begin(), png.begin() + ptrdiff_t(png.size() * 6 / 10)),
       Status::kCorrupt},
      {"png header only", Bytes(png.begin(), png.begin() + 33), Status::kCorrupt},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    try {
      decode_rgb(c.data.empty() ? nullptr : c.data.data(), c.data.size(), kDefaultMaxPixels,
                 nullptr);
      ADD_FAILURE() << "decoded without an error";
    } catch (const ImageError& e) {
      EXPECT_EQ(e.status(), c.status) << status_name(e.status()) << ": " << e.what();
      EXPECT_STRNE(e.what(), "");
    }
  }
}

TEST(Status, Names) {
  for (Status s : {Status::kOk, Status::kEmpty, Status::kUnsupported, Status::kCorrupt,
                   Status::kTooLarge, Status::kInternal}) {
    ASSERT_NE(status_name(s), nullptr);
    EXPECT_GT(std::strlen(status_name(s)), 0u);
  }
  const ImageError e(Status::kCorrupt, "bad");
  EXPECT_EQ(e.status(), Status::kCorrupt);
  EXPECT_STREQ(e.what(), "bad");
}

}  // namespace
}  // namespace stoker
