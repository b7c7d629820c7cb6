// Spec validation and Preprocessor::run: geometry (resize, center crop, padding), every dtype and
// layout, the exact size written, and the per-item failure contract.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/image.hpp"
#include "core/pipeline.hpp"
#include "core/spec.hpp"
#include "test_util.hpp"

namespace stoker {
namespace {

using test::Bytes;
using test::Image;

constexpr DType kDTypes[] = {DType::kUInt8, DType::kFloat32, DType::kFloat16, DType::kBFloat16};
constexpr Layout kLayouts[] = {Layout::kNCHW, Layout::kNHWC};

const char* dtype_name(DType d) {
  switch (d) {
    case DType::kUInt8:
      return "uint8";
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "?";
}

// An output buffer with guard bytes on both sides.
class Slot {
 public:
  static constexpr size_t kGuard = 64;
  static constexpr uint8_t kFill = 0xA5;
  explicit Slot(size_t bytes) : bytes_(bytes), buf_(bytes + 2 * kGuard, kFill) {}
  void* out() { return buf_.data() + kGuard; }
  const uint8_t* data() const { return buf_.data() + kGuard; }
  ::testing::AssertionResult guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i) {
      if (buf_[i] != kFill) {
        return ::testing::AssertionFailure() << "byte " << i - kGuard << " before the item written";
      }
      if (buf_[kGuard + bytes_ + i] != kFill) {
        return ::testing::AssertionFailure() << "byte " << i << " after the item written";
      }
    }
    return ::testing::AssertionSuccess();
  }
  // Whether every byte of the item was written (none still holds the fill pattern in a run of 8).
  bool fully_written() const {
    size_t run = 0;
    for (size_t i = 0; i < bytes_; ++i) {
      run = data()[i] == kFill ? run + 1 : 0;
      if (run >= 8) return false;
    }
    return true;
  }

 private:
  size_t bytes_;
  std::vector<uint8_t> buf_;
};

// The value of channel c at (x, y) of an item, as float.
float read_value(const Spec& spec, const uint8_t* item, int x, int y, int c) {
  const int h = spec.out_height(), w = spec.out_width();
  const size_t index = spec.layout == Layout::kNCHW
                           ? (size_t(c) * size_t(h) + size_t(y)) * size_t(w) + size_t(x)
                           : (size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(c);
  switch (spec.dtype) {
    case DType::kUInt8:
      return float(item[index]);
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, item + index * 4, 4);
      return f;
    }
    case DType::kFloat16:
    case DType::kBFloat16: {
      uint16_t u;
      std::memcpy(&u, item + index * 2, 2);
      return spec.dtype == DType::kFloat16 ? test::half_to_float(u) : test::bf16_to_float(u);
    }
  }
  return NAN;
}

// What a uint8 level v of channel c becomes.
float expected_value(const Spec& spec, int c, int v) {
  if (spec.dtype == DType::kUInt8) return float(v);
  const double x = double(v) / 255.0;
  return spec.normalize ? float((x - spec.mean[size_t(c)]) / spec.std[size_t(c)]) : float(x);
}

// Round-to-nearest conversions of a float computed with a few float32 operations: half an ulp of
// the target type plus the float32 error.
double tolerance(const Spec& spec, float expected) {
  const double a = std::abs(double(expected));
  const double f32 = 1e-6 * std::max(1.0, a);
  switch (spec.dtype) {
    case DType::kUInt8:
      return 0.0;
    case DType::kFloat32:
      return 2 * f32;
    case DType::kFloat16:
      return a * 0x1p-11 + f32 + 0x1p-25;  // 2^-25: half the smallest subnormal step
    case DType::kBFloat16:
      return a * 0x1p-8 + f32 + 1e-30;
  }
  return 0.0;
}

// Checks that the item equals `want` (RGB levels, out size) mapped through the spec's dtype;
// `level_tolerance` levels of slack in the uint8 domain.
::testing::AssertionResult item_matches(const Spec& spec, const uint8_t* item, const Image& want,
                                        int level_tolerance = 0) {
  size_t bad = 0;
  std::string first;
  for (int y = 0; y < want.height; ++y) {
    for (int x = 0; x < want.width; ++x) {
      for (int c = 0; c < 3; ++c) {
        const float got = read_value(spec, item, x, y, c);
        const int v = want.at(x, y)[c];
        const float lo = expected_value(spec, c, std::max(v - level_tolerance, 0));
        const float hi = expected_value(spec, c, std::min(v + level_tolerance, 255));
        const double tol = tolerance(spec, expected_value(spec, c, v));
        const double mn = std::min(lo, hi) - tol, mx = std::max(lo, hi) + tol;
        if (!(got >= mn && got <= mx)) {
          if (bad++ == 0) {
            first = "at (" + std::to_string(x) + "," + std::to_string(y) + ") channel " +
                    std::to_string(c) + ": got " + std::to_string(got) + ", expected " +
                    std::to_string(expected_value(spec, c, v)) + " (level " + std::to_string(v) +
                    ")";
          }
        }
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " values wrong; first " << first;
}

Image decoded(const Bytes& data) {
  ImageInfo info;
  std::vector<uint8_t> rgb = decode_rgb(data.data(), data.size(), kDefaultMaxPixels, &info);
  Image img(info.oriented_width(), info.oriented_height(), 3);
  img.px = std::move(rgb);
  return img;
}

// Spec ------------------------------------------------------------------------------------------

TEST(Spec, DefaultsAndSizes) {
  Spec s;
  EXPECT_NO_THROW(s.validate());
  EXPECT_EQ(s.out_height(), 224);
  EXPECT_EQ(s.out_width(), 224);
  EXPECT_EQ(s.item_bytes(), size_t(224) * 224 * 3 * 4);
  s.dtype = DType::kUInt8;
  EXPECT_EQ(s.item_bytes(), size_t(224) * 224 * 3);
  s.dtype = DType::kBFloat16;
  EXPECT_EQ(s.dtype_size(), 2u);
  s.crop = false;
  s.resize_mode = ResizeMode::kExact;
  s.resize_h = 10;
  s.resize_w = 20;
  EXPECT_EQ(s.out_height(), 10);
  EXPECT_EQ(s.out_width(), 20);
  EXPECT_EQ(s.item_bytes(), size_t(10) * 20 * 3 * 2);
}

TEST(Spec, ResizeTargetFollowsTorchvision) {
  Spec s;
  s.resize_h = 256;
  EXPECT_EQ((resize_target(s, 640, 480)), (std::array<int, 2>{341, 256}));  // int(256*640/480)
  EXPECT_EQ((resize_target(s, 480, 640)), (std::array<int, 2>{256, 341}));
  EXPECT_EQ((resize_target(s, 300, 300)), (std::array<int, 2>{256, 256}));
  EXPECT_EQ((resize_target(s, 1, 1000)), (std::array<int, 2>{256, 256000}));
  s.resize_mode = ResizeMode::kNone;
  EXPECT_EQ((resize_target(s, 17, 9)), (std::array<int, 2>{17, 9}));
  s.resize_mode = ResizeMode::kExact;
  s.resize_h = 5;
  s.resize_w = 7;
  EXPECT_EQ((resize_target(s, 17, 9)), (std::array<int, 2>{7, 5}));
}

TEST(Spec, InvalidSpecsThrowFromTheConstructor) {
  std::vector<std::pair<std::string, Spec>> bad;
  auto add = [&](const std::string& name, auto edit) {
    Spec s;
    edit(s);
    bad.emplace_back(name, s);
  };
  add("zero size", [](Spec& s) { s.resize_h = 0; });
  add("negative size", [](Spec& s) { s.resize_h = -5; });
  add("zero exact width", [](Spec& s) {
    s.resize_mode = ResizeMode::kExact;
    s.resize_w = 0;
  });
  add("zero crop", [](Spec& s) { s.crop_h = 0; });
  add("huge crop", [](Spec& s) { s.crop_w = 1 << 30; });
  add("no output size", [](Spec& s) { s.crop = false; });
  add("no resize no crop", [](Spec& s) {
    s.crop = false;
    s.resize_mode = ResizeMode::kNone;
  });
  add("uint8 normalized", [](Spec& s) {
    s.dtype = DType::kUInt8;
    s.normalize = true;
  });
  add("zero std", [](Spec& s) {
    s.normalize = true;
    s.std = {1.f, 0.f, 1.f};
  });
  add("nan mean", [](Spec& s) {
    s.normalize = true;
    s.mean = {NAN, 0.f, 0.f};
  });
  add("inf std", [](Spec& s) {
    s.normalize = true;
    s.std = {1.f, 1.f, INFINITY};
  });
  add("reduce_gap below 1", [](Spec& s) { s.reduce_gap = 0.5; });
  add("reduce_gap nan", [](Spec& s) { s.reduce_gap = NAN; });
  add("zero max_pixels", [](Spec& s) { s.max_pixels = 0; });
  for (const auto& [name, spec] : bad) {
    EXPECT_THROW(Preprocessor{spec}, std::invalid_argument) << name;
  }
  Spec ok;
  ok.reduce_gap = 0.0;
  EXPECT_NO_THROW(Preprocessor{ok});
  ok.reduce_gap = 1.0;
  ok.crop = false;
  ok.resize_mode = ResizeMode::kExact;
  EXPECT_NO_THROW(Preprocessor{ok});
}

// Geometry and conversion -----------------------------------------------------------------------

// No resize, so the expected item is the center crop of the decoded image, exactly.
TEST(Preprocessor, CenterCropEveryDtypeAndLayout) {
  const Image rgb = test::make_rgb(70, 50, 21);
  test::JpegOptions o;
  o.sampling = test::Sampling::k444;
  const Bytes jpeg = test::encode_jpeg(rgb, o);
  const Image full = decoded(jpeg);
  struct Geometry {
    int crop_w, crop_h;
  };
  // Even and odd margins (Python rounds x.5 to even) and crops larger than the image (padding).
  for (Geometry g : {Geometry{40, 30}, Geometry{41, 31}, Geometry{43, 33}, Geometry{70, 50},
                     Geometry{80, 64}, Geometry{81, 20}, Geometry{9, 57}}) {
    const Image want = test::center_crop(full, g.crop_w, g.crop_h);
    for (DType dtype : kDTypes) {
      for (Layout layout : kLayouts) {
        for (bool normalize : {false, true}) {
          if (normalize && dtype == DType::kUInt8) continue;
          SCOPED_TRACE(testing::Message()
                       << "crop " << g.crop_w << "x" << g.crop_h << " " << dtype_name(dtype)
                       << (layout == Layout::kNCHW ? " NCHW" : " NHWC")
                       << (normalize ? " normalized" : ""));
          Spec spec;
          spec.resize_mode = ResizeMode::kNone;
          spec.crop_w = g.crop_w;
          spec.crop_h = g.crop_h;
          spec.dtype = dtype;
          spec.layout = layout;
          spec.normalize = normalize;
          spec.mean = {0.485f, 0.456f, 0.406f};
          spec.std = {0.229f, 0.224f, 0.225f};
          const Preprocessor pre(spec);
          Slot slot(spec.item_bytes());
          Scratch scratch;
          ItemResult result;
          pre.run(jpeg.data(), jpeg.size(), slot.out(), scratch, result);
          ASSERT_EQ(result.status, Status::kOk) << result.message;
          EXPECT_TRUE(slot.guards_intact());
          EXPECT_TRUE(slot.fully_written());
          EXPECT_TRUE(item_matches(spec, slot.data(), want));
        }
      }
    }
  }
}

struct ResizeCase {
  std::string name;
  Bytes data;
  Spec spec;
};

std::vector<ResizeCase> resize_cases() {
  std::vector<ResizeCase> cases;
  const Image a = test::make_rgb(157, 103, 31);
  test::JpegOptions o;
  const Bytes jpeg = test::encode_jpeg(a, o);
  o.orientation = 6;
  const Bytes jpeg6 = test::encode_jpeg(a, o);
  const Bytes png =
      test::encode_png(test::make_rgb(90, 120, 32), test::PngKind::kRgba8, false).data;
  const Bytes png8 = test::encode_png(test::make_rgb(64, 40, 35), test::PngKind::kPalette8, false,
                                      test::make_exif_tiff(8, true))
                         .data;
  for (Interp interp : {Interp::kNearest, Interp::kBilinear, Interp::kBicubic}) {
    for (bool aa : {true, false}) {
      Spec s;
      s.interp = interp;
      s.antialias = aa;
      s.dtype = DType::kUInt8;
      s.layout = Layout::kNHWC;
      s.resize_h = 64;
      s.crop_h = 48;
      s.crop_w = 56;
      const std::string suffix =
          std::string(" interp ") + std::to_string(int(interp)) + (aa ? " aa" : " no-aa");
      cases.push_back({"jpeg shorter-side crop" + suffix, jpeg, s});
      cases.push_back({"jpeg orientation 6" + suffix, jpeg6, s});
      Spec up = s;
      up.resize_h = 150;  // upscale
      up.crop_h = up.crop_w = 101;
      cases.push_back({"png rgba upscale" + suffix, png, up});
      Spec exact = s;
      exact.resize_mode = ResizeMode::kExact;
      exact.resize_h = 37;
      exact.resize_w = 211;
      exact.crop = false;
      cases.push_back({"jpeg exact" + suffix, jpeg, exact});
      Spec pad = s;
      pad.resize_h = 30;
      pad.crop_h = 64;
      pad.crop_w = 33;
      cases.push_back({"png palette orientation 8, padded crop" + suffix, png8, pad});
    }
  }
  return cases;
}

TEST(Preprocessor, ResizeCropMatchesReference) {
  for (const ResizeCase& c : resize_cases()) {
    SCOPED_TRACE(c.name);
    const Image full = decoded(c.data);
    const auto [tw, th] = resize_target(c.spec, full.width, full.height);
    const Image resized = test::fixed_point_resize(full, tw, th, c.spec.interp, c.spec.antialias);
    const Image ref = test::reference_resize(full, tw, th, c.spec.interp, c.spec.antialias);
    const Image want =
        c.spec.crop ? test::center_crop(resized, c.spec.crop_w, c.spec.crop_h) : resized;
    const Image want_ref = c.spec.crop ? test::center_crop(ref, c.spec.crop_w, c.spec.crop_h) : ref;
    const Preprocessor pre(c.spec);
    Slot slot(c.spec.item_bytes());
    Scratch scratch;
    ItemResult result;
    pre.run(c.data.data(), c.data.size(), slot.out(), scratch, result);
    ASSERT_EQ(result.status, Status::kOk) << result.message;
    EXPECT_TRUE(slot.guards_intact());
    // Exactly torch's fixed-point kernels, computed only for the kept window...
    EXPECT_TRUE(item_matches(c.spec, slot.data(), want));
    // ... and close to the double-precision definition: nearest exactly; otherwise at most one
    // level, except rarely two where torch's rounded uint8 intermediate meets a rounding boundary.
    size_t over1 = 0, values = 0;
    int max_diff = 0;
    for (size_t i = 0; i < want_ref.px.size(); ++i) {
      const int d = std::abs(int(slot.data()[i]) - int(want_ref.px[i]));
      max_diff = std::max(max_diff, d);
      over1 += d > 1;
      ++values;
    }
    if (c.spec.interp == Interp::kNearest) {
      EXPECT_EQ(max_diff, 0);
    } else {
      EXPECT_LE(max_diff, 2);
      EXPECT_LE(over1 * 200, values) << over1 << " of " << values << " values off by 2";
    }
  }
}

TEST(Preprocessor, WebpAndReducedJpegDecodes) {
  Spec spec;
  spec.resize_h = 64;
  spec.crop_h = spec.crop_w = 56;
  spec.dtype = DType::kUInt8;
  spec.layout = Layout::kNHWC;
  const Image big = test::make_rgb(640, 480, 41);
  const Bytes jpeg = test::encode_jpeg(big, {});
  const Image full = decoded(jpeg);
  const auto [tw, th] = resize_target(spec, full.width, full.height);
  const Image want = test::center_crop(
      test::fixed_point_resize(full, tw, th, spec.interp, spec.antialias), 56, 56);
  for (double gap : {0.0, 1.0, 2.0, 3.0}) {
    SCOPED_TRACE(testing::Message() << "reduce_gap " << gap);
    Spec s = spec;
    s.reduce_gap = gap;
    const Preprocessor pre(s);
    Slot slot(s.item_bytes());
    Scratch scratch;
    ItemResult result;
    pre.run(jpeg.data(), jpeg.size(), slot.out(), scratch, result);
    ASSERT_EQ(result.status, Status::kOk) << result.message;
    EXPECT_TRUE(slot.guards_intact());
    if (gap == 0.0) {
      EXPECT_TRUE(item_matches(s, slot.data(), want));
    } else {
      // A DCT-scaled decode differs a little from the full one; it must stay close.
      double sum = 0.0;
      for (size_t i = 0; i < want.px.size(); ++i)
        sum += std::abs(int(slot.data()[i]) - int(want.px[i]));
      EXPECT_LT(sum / double(want.px.size()), 3.0);
    }
  }
#ifdef STOKER_HAVE_WEBP
  for (bool lossless : {false, true}) {
    SCOPED_TRACE(lossless ? "webp lossless" : "webp lossy");
    const Bytes webp = test::encode_webp(test::make_rgb(120, 90, 42), lossless);
    const Image dec = decoded(webp);
    const auto [ww, wh] = resize_target(spec, dec.width, dec.height);
    const Image wwant = test::center_crop(
        test::fixed_point_resize(dec, ww, wh, spec.interp, spec.antialias), 56, 56);
    const Preprocessor pre(spec);
    Slot slot(spec.item_bytes());
    Scratch scratch;
    ItemResult result;
    pre.run(webp.data(), webp.size(), slot.out(), scratch, result);
    ASSERT_EQ(result.status, Status::kOk) << result.message;
    EXPECT_TRUE(slot.guards_intact());
    EXPECT_TRUE(item_matches(spec, slot.data(), wwant));
  }
#endif
}

TEST(Preprocessor, ScratchReuseAcrossSizes) {
  Spec spec;
  spec.resize_h = 40;
  spec.crop_h = spec.crop_w = 32;
  spec.dtype = DType::kFloat16;
  const Preprocessor pre(spec);
  Scratch shared;
  test::Rng rng(5);
  for (int i = 0; i < 12; ++i) {
    const int w = rng.range(8, 300), h = rng.range(8, 300);
    const Image img = test::make_rgb(w, h, uint64_t(i));
    const Bytes data = i % 3 == 0 ? test::encode_png(img, test::PngKind::kRgb8, false).data
                                  : test::encode_jpeg(img, {});
    Slot a(spec.item_bytes()), b(spec.item_bytes());
    Scratch fresh;
    ItemResult ra, rb;
    pre.run(data.data(), data.size(), a.out(), shared, ra);
    pre.run(data.data(), data.size(), b.out(), fresh, rb);
    ASSERT_EQ(ra.status, Status::kOk) << ra.message;
    ASSERT_EQ(rb.status, Status::kOk) << rb.message;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), spec.item_bytes()), 0) << w << "x" << h;
    EXPECT_TRUE(a.guards_intact());
  }
}

// Failures ----------------------------------------------------------------------------------------

TEST(Preprocessor, FailuresReportStatusAndFillZeroValue) {
  const Image rgb = test::make_rgb(96, 72, 51);
  const Bytes jpeg = test::encode_jpeg(rgb, {});
  const Bytes png = test::encode_png(rgb, test::PngKind::kRgb8, false).data;
  struct Case {
    std::string name;
    Bytes data;
    bool null_data;
    Status status;
    int64_t max_pixels;
  };
  const std::vector<Case> cases = {
      {"empty (nullptr)", {}, true, Status::kEmpty, kDefaultMaxPixels},
      {"empty (pointer, size 0)", Bytes(1, 0xFF), false, Status::kEmpty, kDefaultMaxPixels},
      {"garbage", Bytes(300, 0x5A), false, Status::kUnsupported, kDefaultMaxPixels},
      {"jpeg truncated", Bytes(jpeg.begin(), jpeg.begin() + ptrdiff_t(jpeg.size() / 2)), false,
       Status::kCorrupt, kDefaultMaxPixels},
      {"png truncated", Bytes(png.begin(), png.begin() + ptrdiff_t(png.size() / 2)), false,
       Status::kCorrupt, kDefaultMaxPixels},
      {"jpeg over max_pixels", jpeg, false, Status::kTooLarge, 96 * 72 - 1},
      {"png over max_pixels", png, false, Status::kTooLarge, 1000},
  };
  for (const Case& c : cases) {
    for (DType dtype : kDTypes) {
      for (Layout layout : kLayouts) {
        for (bool normalize : {false, true}) {
          if (normalize && dtype == DType::kUInt8) continue;
          SCOPED_TRACE(testing::Message() << c.name << " " << dtype_name(dtype)
                                          << (layout == Layout::kNCHW ? " NCHW" : " NHWC")
                                          << (normalize ? " normalized" : ""));
          Spec spec;
          spec.resize_h = 20;
          spec.crop_h = 16;
          spec.crop_w = 18;
          spec.dtype = dtype;
          spec.layout = layout;
          spec.normalize = normalize;
          spec.mean = {0.5f, 0.25f, -0.125f};
          spec.std = {0.5f, 2.0f, 0.25f};
          spec.max_pixels = c.max_pixels;
          const Preprocessor pre(spec);
          Slot slot(spec.item_bytes());
          Scratch scratch;
          ItemResult result;
          const uint8_t* data = c.null_data ? nullptr : c.data.data();
          const size_t size = c.name.find("size 0") != std::string::npos ? 0 : c.data.size();
          pre.run(data, size, slot.out(), scratch, result);
          EXPECT_EQ(result.status, c.status)
              << "got " << status_name(result.status) << ": " << result.message;
          EXPECT_FALSE(result.message.empty());
          EXPECT_TRUE(slot.guards_intact());
          EXPECT_TRUE(item_matches(spec, slot.data(), Image(18, 16, 3)))
              << "the slot must hold what a black pixel normalizes to";
          // A later good item through the same scratch still works.
          ItemResult ok;
          pre.run(jpeg.data(), jpeg.size(), slot.out(), scratch, ok);
          if (c.max_pixels == kDefaultMaxPixels) {
            EXPECT_EQ(ok.status, Status::kOk) << ok.message;
          }
        }
      }
    }
  }
}

TEST(Preprocessor, RunResetsTheResult) {
  Spec spec;
  spec.crop_h = spec.crop_w = 8;
  spec.resize_h = 8;
  const Preprocessor pre(spec);
  Slot slot(spec.item_bytes());
  Scratch scratch;
  ItemResult result;
  result.status = Status::kCorrupt;
  result.message = "stale";
  const Bytes jpeg = test::encode_jpeg(test::make_rgb(20, 20, 1), {});
  pre.run(jpeg.data(), jpeg.size(), slot.out(), scratch, result);
  EXPECT_EQ(result.status, Status::kOk);
  EXPECT_TRUE(result.message.empty()) << result.message;
}

}  // namespace
}  // namespace stoker

namespace stoker {
namespace {

// docs/preprocessing.md: "a truncated file fails as CorruptImageError", whatever part of the image
// the crop keeps and whichever entropy coding the file uses.
TEST(Preprocessor, TruncatedJpegFailsWhateverTheCrop) {
  const Image rgb = test::make_rgb(160, 120, 77);
  for (bool arithmetic : {false, true}) {
    for (bool progressive : {false, true}) {
      test::JpegOptions o;
      o.arithmetic = arithmetic;
      o.progressive = progressive;
      const Bytes jpeg = test::encode_jpeg(rgb, o);
      for (int percent : {50, 80, 95}) {
        const Bytes cut(jpeg.begin(),
                        jpeg.begin() + ptrdiff_t(jpeg.size() * size_t(percent) / 100));
        struct Variant {
          const char* name;
          Spec spec;
        };
        std::vector<Variant> variants;
        Spec full;
        full.resize_mode = ResizeMode::kNone;
        full.crop_w = 160;
        full.crop_h = 120;
        variants.push_back({"full image", full});
        Spec top = full;
        top.crop_h = 8;  // the middle rows only
        variants.push_back({"middle rows", top});
        Spec small;
        small.resize_h = 20;
        small.crop_h = small.crop_w = 16;
        variants.push_back({"resize", small});
        small.reduce_gap = 1.0;
        variants.push_back({"resize with reduce_gap", small});
        for (const Variant& v : variants) {
          SCOPED_TRACE(testing::Message() << (arithmetic ? "arithmetic" : "huffman")
                                          << (progressive ? " progressive" : "") << " cut to "
                                          << percent << "% " << v.name);
          const Preprocessor pre(v.spec);
          std::vector<uint8_t> out(v.spec.item_bytes());
          Scratch scratch;
          ItemResult result;
          pre.run(cut.data(), cut.size(), out.data(), scratch, result);
          EXPECT_EQ(result.status, Status::kCorrupt)
              << status_name(result.status) << " " << result.message;
        }
        try {
          decode_rgb(cut.data(), cut.size(), kDefaultMaxPixels, nullptr);
          ADD_FAILURE() << (arithmetic ? "arithmetic" : "huffman") << " cut to " << percent
                        << "%: decode_rgb succeeded";
        } catch (const ImageError& e) {
          EXPECT_EQ(e.status(), Status::kCorrupt) << e.what();
        }
      }
    }
  }
}

}  // namespace
}  // namespace stoker
