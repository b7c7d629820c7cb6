// axis_weights, resample_rows and resample_column_row against a double-precision reference written
// from torch's definition, and against the same kernels quantized as torch quantizes them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "core/resize.hpp"
#include "test_util.hpp"

namespace stoker {
namespace {

using test::Image;

const char* interp_name(Interp i) {
  switch (i) {
    case Interp::kNearest:
      return "nearest";
    case Interp::kBilinear:
      return "bilinear";
    case Interp::kBicubic:
      return "bicubic";
  }
  return "?";
}

constexpr Interp kInterps[] = {Interp::kNearest, Interp::kBilinear, Interp::kBicubic};

// Input index -> weight of one output, padding and the position of `first` forgotten.
std::map<int, int> effective(const AxisWeights& w, int i) {
  std::map<int, int> m;
  for (int t = 0; t < w.taps; ++t) {
    const int16_t v = w.weights[size_t(i) * size_t(w.taps) + size_t(t)];
    if (v != 0) m[w.first[size_t(i)] + t] += v;
  }
  return m;
}

// torch's int16 weights for output `o` of the whole axis.
std::map<int, int> quantized_reference(const std::vector<test::RefWeights>& ref, int precision,
                                       int o) {
  std::map<int, int> m;
  const test::RefWeights& rw = ref[size_t(o)];
  for (size_t j = 0; j < rw.w.size(); ++j) {
    const double v = rw.w[j] * double(1 << precision);
    const int q = int16_t(v < 0 ? v - 0.5 : v + 0.5);
    if (q != 0) m[rw.first + int(j)] += q;
  }
  return m;
}

int reference_precision(const std::vector<test::RefWeights>& ref) {
  double max_w = 0.0;
  for (const auto& rw : ref) {
    for (double v : rw.w) max_w = std::max(max_w, v);
  }
  int p = 0;
  for (; p < 22; ++p) {
    if (int(0.5 + max_w * double(1 << (p + 1))) >= (1 << 15)) break;
  }
  return p;
}

std::string describe_map(const std::map<int, int>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += std::to_string(k) + ":" + std::to_string(v) + " ";
  return s;
}

TEST(AxisWeights, InvariantsOnRandomSizes) {
  test::Rng rng(2024);
  for (int iter = 0; iter < 300; ++iter) {
    const int in = rng.chance(0.1) ? rng.range(1, 4) : rng.range(1, 500);
    const int out = rng.chance(0.1) ? rng.range(1, 4) : rng.range(1, 500);
    int begin = 0, end = out;
    if (rng.chance(0.5)) {
      begin = rng.range(0, out - 1);
      end = rng.range(begin + 1, out);
    }
    for (Interp interp : kInterps) {
      for (bool aa : {false, true}) {
        SCOPED_TRACE(testing::Message() << in << " -> " << out << " [" << begin << "," << end
                                        << ") " << interp_name(interp) << " antialias " << aa);
        const AxisWeights w = axis_weights(in, out, begin, end, interp, aa);
        const int n = end - begin;
        ASSERT_EQ(w.out_begin, begin);
        ASSERT_EQ(w.out_end, end);
        ASSERT_GE(w.taps, 1);
        ASSERT_GE(w.precision, 0);
        ASSERT_LE(w.precision, 22);
        ASSERT_EQ(w.first.size(), size_t(n));
        ASSERT_EQ(w.weights.size(), size_t(n) * size_t(w.taps));
        EXPECT_GE(w.in_lo, 0);
        EXPECT_LE(w.in_hi, in);
        EXPECT_LT(w.in_lo, w.in_hi);
        const int64_t unit = int64_t(1) << w.precision;
        int bad_sum = 0, bad_first = 0, bad_bound = 0;
        for (int i = 0; i < n; ++i) {
          int64_t sum = 0;
          for (int t = 0; t < w.taps; ++t) {
            const int16_t v = w.weights[size_t(i) * size_t(w.taps) + size_t(t)];
            sum += v;
            const int src = w.first[size_t(i)] + t;
            if (v != 0 && (src < w.in_lo || src >= w.in_hi || src < 0 || src >= in)) ++bad_bound;
          }
          if (std::llabs(sum - unit) > w.taps) ++bad_sum;
          if (w.taps <= in && (w.first[size_t(i)] < 0 || w.first[size_t(i)] > in - w.taps)) {
            ++bad_first;
          }
        }
        EXPECT_EQ(bad_sum, 0) << "outputs whose weights do not sum to 2^" << w.precision;
        EXPECT_EQ(bad_first, 0) << "outputs whose first is outside [0, in - taps]";
        EXPECT_EQ(bad_bound, 0) << "nonzero weights outside [in_lo, in_hi) or the input";
        // Exactly torch's quantized kernel (an axis whose size does not change is copied).
        if (in != out) {
          const auto ref = test::reference_weights(in, out, interp, aa);
          if (interp != Interp::kNearest) {
            EXPECT_EQ(w.precision, reference_precision(ref));
          }
          int mismatched = 0;
          for (int i = 0; i < n; ++i) {
            const auto got = effective(w, i);
            const auto want = quantized_reference(ref, w.precision, begin + i);
            if (got != want && mismatched++ == 0) {
              ADD_FAILURE() << "output " << begin + i << ": got {" << describe_map(got)
                            << "}, expected {" << describe_map(want) << "}";
            }
          }
          EXPECT_EQ(mismatched, 0);
        }
      }
    }
  }
}

TEST(AxisWeights, IdentityIsUnitWeight) {
  for (int size : {1, 2, 3, 7, 64, 499}) {
    for (Interp interp : kInterps) {
      for (bool aa : {false, true}) {
        const AxisWeights w = axis_weights(size, size, 0, size, interp, aa);
        for (int i = 0; i < size; ++i) {
          const auto m = effective(w, i);
          ASSERT_EQ(m.size(), 1u) << size << " " << interp_name(interp) << " output " << i;
          EXPECT_EQ(m.begin()->first, i);
          EXPECT_EQ(m.begin()->second, 1 << w.precision);
        }
      }
    }
  }
}

TEST(AxisWeights, CropRangeEqualsFullAxis) {
  test::Rng rng(77);
  for (int iter = 0; iter < 100; ++iter) {
    const int in = rng.range(1, 400), out = rng.range(2, 400);
    const int begin = rng.range(0, out - 1), end = rng.range(begin + 1, out);
    for (Interp interp : kInterps) {
      for (bool aa : {false, true}) {
        const AxisWeights full = axis_weights(in, out, 0, out, interp, aa);
        const AxisWeights part = axis_weights(in, out, begin, end, interp, aa);
        ASSERT_EQ(full.precision, part.precision) << in << "->" << out;
        for (int i = begin; i < end; ++i) {
          ASSERT_EQ(effective(full, i), effective(part, i - begin))
              << in << "->" << out << " [" << begin << "," << end << ") " << interp_name(interp)
              << " aa " << aa << " output " << i;
        }
      }
    }
  }
}

// Runs the two passes of the core over an RGBX window of `img` (columns [x0, x1), rows [y0, y1))
// for outputs [bx, ex) x [by, ey) of an out_w x out_h resize; returns packed RGB.
Image core_resize(const Image& rgb, int out_w, int out_h, int bx, int ex, int by, int ey,
                  Interp interp, bool aa) {
  const AxisWeights wx = axis_weights(rgb.width, out_w, bx, ex, interp, aa);
  const AxisWeights wy = axis_weights(rgb.height, out_h, by, ey, interp, aa);
  // The input window the weights claim to need: every tap that is read, padding included.
  int x0 = rgb.width, x1 = 0, y0 = rgb.height, y1 = 0;
  for (int v : wx.first) {
    x0 = std::min(x0, v);
    x1 = std::max(x1, v + wx.taps);
  }
  for (int v : wy.first) {
    y0 = std::min(y0, v);
    y1 = std::max(y1, v + wy.taps);
  }
  EXPECT_GE(x0, 0);
  EXPECT_LE(x1, rgb.width);
  EXPECT_GE(y0, 0);
  EXPECT_LE(y1, rgb.height);
  x0 = std::max(x0, 0);
  y0 = std::max(y0, 0);
  x1 = std::min(x1, rgb.width);
  y1 = std::min(y1, rgb.height);
  // An exact-size RGBX copy of the window (4th byte random): reads outside it are ASan errors.
  const int ww = x1 - x0, wh = y1 - y0;
  // 16 bytes of slack after the last row: the AVX2 horizontal pass loads 4 pixels per 4 taps and
  // so reads up to 3 pixels past the last tap (see ResampleRows.StaysInsideItsBuffers).
  const size_t src_stride = size_t(ww) * 4 + 8;
  std::vector<uint8_t> src(src_stride * size_t(wh) + 16);
  test::Rng rng(uint64_t(ww * 131 + wh));
  for (auto& v : src) v = rng.byte();
  for (int y = 0; y < wh; ++y) {
    for (int x = 0; x < ww; ++x) {
      uint8_t* p = &src[size_t(y) * src_stride + size_t(x) * 4];
      std::memcpy(p, rgb.at(x0 + x, y0 + y), 3);
      p[3] = rng.byte();
    }
  }
  const int nx = ex - bx, ny = ey - by;
  const size_t mid_stride = size_t(nx) * 3;
  // Slack after the last row for the AVX2 pass's 4-byte stores (checked separately).
  std::vector<uint8_t> mid(mid_stride * size_t(wh) + 16);
  resample_rows(src.data(), src_stride, x0, wh, wx, mid.data(), mid_stride);
  Image out(nx, ny, 3);
  std::vector<int32_t> acc(size_t(nx) * 3);
  std::vector<const uint8_t*> rows(size_t(wy.taps));
  for (int i = 0; i < ny; ++i) {
    for (int t = 0; t < wy.taps; ++t) {
      rows[size_t(t)] = mid.data() + size_t(wy.first[size_t(i)] + t - y0) * mid_stride;
    }
    resample_column_row(rows.data(), wy.weights.data() + size_t(i) * size_t(wy.taps), wy.taps,
                        wy.precision, nx * 3, out.at(0, i), acc.data());
  }
  return out;
}

struct Diff {
  int max = 0;
  size_t over1 = 0;
  size_t values = 0;
  size_t differ = 0;
};

Diff compare(const Image& a, const Image& b, int bx = 0, int by = 0) {
  Diff d;
  for (int y = 0; y < a.height; ++y) {
    for (int x = 0; x < a.width; ++x) {
      for (int c = 0; c < 3; ++c) {
        const int v = std::abs(int(a.at(x, y)[c]) - int(b.at(x + bx, y + by)[c]));
        d.max = std::max(d.max, v);
        d.over1 += v > 1;
        d.differ += v != 0;
        ++d.values;
      }
    }
  }
  return d;
}

struct DiffStats {
  int max = 0;
  size_t over1 = 0, values = 0, differ = 0;
  void add(const Diff& d) {
    max = std::max(max, d.max);
    over1 += d.over1;
    values += d.values;
    differ += d.differ;
  }
};

TEST(Resample, MatchesReferenceOnRandomImages) {
  DiffStats stats[3][2];
  test::Rng rng(31337);
  for (int iter = 0; iter < 60; ++iter) {
    const int in_w = rng.range(1, 96), in_h = rng.range(1, 96);
    int out_w = rng.range(1, 96), out_h = rng.range(1, 96);
    if (iter % 10 == 0) {  // strong downscales widen the antialiased support a lot
      out_w = rng.range(1, 6);
      out_h = rng.range(1, 6);
    }
    const Image img = iter % 2 ? test::make_noise(in_w, in_h, 3, uint64_t(iter))
                               : test::make_rgb(in_w, in_h, uint64_t(iter));
    for (Interp interp : kInterps) {
      for (bool aa : {false, true}) {
        SCOPED_TRACE(testing::Message() << in_w << "x" << in_h << " -> " << out_w << "x" << out_h
                                        << " " << interp_name(interp) << " antialias " << aa);
        const Image got = core_resize(img, out_w, out_h, 0, out_w, 0, out_h, interp, aa);
        const Image ref = test::reference_resize(img, out_w, out_h, interp, aa);
        const Diff d = compare(got, ref);
        stats[size_t(interp)][aa].add(d);
        if (interp == Interp::kNearest) {
          EXPECT_EQ(d.max, 0) << "nearest must be exact";
        } else {
          // torch's int16 arithmetic rounds the uint8 intermediate image, so a value can be one
          // level off before the second pass; that pass (bicubic's negative lobes, or a result on a
          // rounding boundary) makes it two, rarely. The exact arithmetic is checked below.
          EXPECT_LE(d.max, 2);
          EXPECT_LE(d.over1 * 200, d.values) << d.over1 << " of " << d.values << " values off by 2";
        }
        const Image fixed = test::fixed_point_resize(img, out_w, out_h, interp, aa);
        const Diff f = compare(got, fixed);
        EXPECT_EQ(f.max, 0) << f.differ << " of " << f.values
                            << " values differ from torch's int16 fixed-point arithmetic";
      }
    }
  }
  for (Interp interp : kInterps) {
    for (bool aa : {false, true}) {
      const DiffStats& s = stats[size_t(interp)][aa];
      std::cout << "vs double reference, " << interp_name(interp) << (aa ? " antialias" : "")
                << ": max " << s.max << ", " << s.differ << " of " << s.values << " values differ, "
                << s.over1 << " by 2" << std::endl;
    }
  }
}

TEST(Resample, CropWindowEqualsFullResize) {
  test::Rng rng(4242);
  for (int iter = 0; iter < 40; ++iter) {
    const int in_w = rng.range(2, 120), in_h = rng.range(2, 120);
    const int out_w = rng.range(2, 120), out_h = rng.range(2, 120);
    const int bx = rng.range(0, out_w - 1), ex = rng.range(bx + 1, out_w);
    const int by = rng.range(0, out_h - 1), ey = rng.range(by + 1, out_h);
    const Image img = test::make_rgb(in_w, in_h, uint64_t(iter) + 100);
    for (Interp interp : kInterps) {
      for (bool aa : {false, true}) {
        SCOPED_TRACE(testing::Message() << in_w << "x" << in_h << " -> " << out_w << "x" << out_h
                                        << " window x[" << bx << "," << ex << ") y[" << by << ","
                                        << ey << ") " << interp_name(interp) << " aa " << aa);
        const Image full = core_resize(img, out_w, out_h, 0, out_w, 0, out_h, interp, aa);
        const Image part = core_resize(img, out_w, out_h, bx, ex, by, ey, interp, aa);
        EXPECT_EQ(compare(part, full, bx, by).max, 0);
      }
    }
  }
}

// resize.hpp promises packed RGB rows of (out_end - out_begin) pixels; nothing there allows
// writing past them (the pipeline's buffers have slack, a caller following the header need not).
TEST(Resample, RowsStayInsideTheirOutput) {
  const Image img = test::make_rgb(40, 3, 1);
  for (Interp interp : {Interp::kBilinear, Interp::kBicubic}) {
    const AxisWeights w = axis_weights(40, 17, 0, 17, interp, true);
    std::vector<uint8_t> src(40 * 4 * 3 + 64);
    for (int y = 0; y < 3; ++y) {
      for (int x = 0; x < 40; ++x) std::memcpy(&src[size_t(y * 160 + x * 4)], img.at(x, y), 3);
    }
    constexpr uint8_t kCanary = 0xCD;
    std::vector<uint8_t> dst(17 * 3 * 3 + 16, kCanary);
    resample_rows(src.data(), 160, 0, 3, w, dst.data(), 17 * 3);
    size_t written = 0;
    for (size_t i = 17 * 3 * 3; i < dst.size(); ++i) written += dst[i] != kCanary;
    EXPECT_EQ(written, 0u) << interp_name(interp) << ": resample_rows wrote " << written
                           << " byte(s) past the last output row";
  }
}

// The same for the input: an RGBX window holding exactly the pixels the weights name (every tap of
// every output, padding included) must be enough. Run in a child process, where an
// AddressSanitizer report ends only the child.
TEST(ResampleDeathTest, RowsReadOnlyTheirTaps) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  for (Interp interp : {Interp::kBilinear, Interp::kBicubic}) {
    for (int out : {17, 9, 3}) {
      const AxisWeights w = axis_weights(40, out, 0, out, interp, true);
      int x0 = 40, x1 = 0;
      for (int f : w.first) {
        x0 = std::min(x0, f);
        x1 = std::max(x1, f + w.taps);
      }
      auto child = [&] {
        const int rows = 2, ww = x1 - x0;
        std::vector<uint8_t> src(size_t(ww) * 4 * rows, 100);  // exact: no slack at all
        std::vector<uint8_t> dst(size_t(out) * 3 * rows + 64);
        resample_rows(src.data(), size_t(ww) * 4, x0, rows, w, dst.data(), size_t(out) * 3);
        std::exit(dst[0] == 100 ? 0 : 3);
      };
      EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "")
          << interp_name(interp) << " 40 -> " << out << " (taps " << w.taps << ", window [" << x0
          << ", " << x1 << ")): resample_rows read outside the pixels its weights name";
    }
  }
}

TEST(Resample, ColumnRowSaturatesAndRounds) {
  // Two rows mixed with weights that overshoot: results clamp to [0, 255].
  const int precision = 14;
  std::vector<uint8_t> a(12, 255), b(12, 0);
  const uint8_t* rows[2] = {a.data(), b.data()};
  std::vector<uint8_t> dst(12);
  std::vector<int32_t> acc(12);
  const int16_t over[2] = {int16_t(1.25 * (1 << precision)), int16_t(-0.25 * (1 << precision))};
  resample_column_row(rows, over, 2, precision, 12, dst.data(), acc.data());
  for (uint8_t v : dst) EXPECT_EQ(v, 255);
  const int16_t under[2] = {int16_t(-0.25 * (1 << precision)), int16_t(1.25 * (1 << precision))};
  resample_column_row(rows, under, 2, precision, 12, dst.data(), acc.data());
  for (uint8_t v : dst) EXPECT_EQ(v, 0);
  // 255 * 0.5 = 127.5 rounds up.
  const int16_t half[2] = {int16_t(1 << (precision - 1)), int16_t(1 << (precision - 1))};
  resample_column_row(rows, half, 2, precision, 12, dst.data(), acc.data());
  for (uint8_t v : dst) EXPECT_EQ(v, 128);
}

}  // namespace
}  // namespace stoker
