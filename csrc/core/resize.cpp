#include "core/resize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace stoker {
namespace {

double triangle(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Keys' cubic convolution kernel with parameter a.
double cubic(double x, double a) {
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

struct Window {
  int first = 0;
  std::vector<double> w;
};

// torch's antialiased kernel (the PIL one): the filter stretched by the downscale factor.
Window antialiased(int i, int in, double scale, Interp interp) {
  const double base = interp == Interp::kBicubic ? 2.0 : 1.0;
  const double support = scale >= 1.0 ? base * scale : base;
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  const double center = scale * (i + 0.5);
  const int xmin = std::max(int(center - support + 0.5), 0);
  const int xmax = std::min(int(center + support + 0.5), in);
  Window win;
  win.first = xmin;
  double total = 0.0;
  for (int j = 0; j < xmax - xmin; ++j) {
    const double x = (j + xmin - center + 0.5) * invscale;
    const double v = interp == Interp::kBicubic ? cubic(x, -0.5) : triangle(x);
    win.w.push_back(v);
    total += v;
  }
  if (total != 0.0) {
    for (double& v : win.w) v /= total;
  }
  return win;
}

// torch's plain bilinear / bicubic (a = -0.75) with border samples replicated.
Window plain(int i, int in, double scale, Interp interp) {
  double src = scale * (i + 0.5) - 0.5;
  Window win;
  if (interp == Interp::kBilinear) {
    if (src < 0.0) src = 0.0;
    const int x0 = std::min(int(src), in - 1);
    const double t = src - x0;
    win.first = x0;
    win.w = x0 + 1 < in ? std::vector<double>{1.0 - t, t} : std::vector<double>{1.0};
    return win;
  }
  const int x0 = int(std::floor(src));
  const double t = src - x0;
  const double k[4] = {cubic(t + 1.0, -0.75), cubic(t, -0.75), cubic(1.0 - t, -0.75),
                       cubic(2.0 - t, -0.75)};
  const int lo = std::clamp(x0 - 1, 0, in - 1), hi = std::clamp(x0 + 2, 0, in - 1);
  win.first = lo;
  win.w.assign(size_t(hi - lo + 1), 0.0);
  for (int j = 0; j < 4; ++j) win.w[size_t(std::clamp(x0 - 1 + j, 0, in - 1) - lo)] += k[j];
  return win;
}

Window nearest(int i, int in, int out) {
  const float scale = float(in) / float(out);
  Window win;
  win.first = std::min(int(std::floor(float(i) * scale)), in - 1);
  win.w = {1.0};
  return win;
}

}  // namespace

AxisWeights axis_weights(int in_size, int out_size, int out_begin, int out_end, Interp interp,
                         bool antialias) {
  AxisWeights aw;
  aw.out_begin = out_begin;
  aw.out_end = out_end;
  const int n = std::max(out_end - out_begin, 0);
  if (in_size == out_size || interp == Interp::kNearest) {
    aw.identity = in_size == out_size;
    aw.taps = 1;
    aw.precision = 14;
    aw.first.resize(size_t(n));
    aw.weights.assign(size_t(n), int16_t(1 << 14));
    for (int i = 0; i < n; ++i) {
      const int o = out_begin + i;
      aw.first[size_t(i)] = aw.identity ? o : nearest(o, in_size, out_size).first;
    }
  } else {
    const double scale = double(in_size) / double(out_size);
    auto window = [&](int o) {
      return antialias ? antialiased(o, in_size, scale, interp) : plain(o, in_size, scale, interp);
    };
    // The fixed-point precision depends on the largest weight of the whole axis, as in torch, so
    // a crop computes exactly the values the full resize would.
    double max_weight = 0.0;
    for (int o = 0; o < out_size; ++o) {
      for (double v : window(o).w) max_weight = std::max(max_weight, v);
    }
    int precision = 0;
    for (; precision < 22; ++precision) {
      if (int(0.5 + max_weight * double(1 << (precision + 1))) >= (1 << 15)) break;
    }
    aw.precision = precision;
    std::vector<Window> windows;
    windows.reserve(size_t(n));
    int taps = 1;
    for (int i = 0; i < n; ++i) {
      windows.push_back(window(out_begin + i));
      taps = std::max(taps, int(windows.back().w.size()));
    }
    taps = std::min(taps, in_size);
    aw.taps = taps;
    aw.first.resize(size_t(n));
    aw.weights.assign(size_t(n) * size_t(taps), 0);
    for (int i = 0; i < n; ++i) {
      const Window& win = windows[size_t(i)];
      const int first = std::min(win.first, in_size - taps);
      aw.first[size_t(i)] = first;
      for (size_t j = 0; j < win.w.size(); ++j) {
        const double v = win.w[j] * double(1 << precision);
        aw.weights[size_t(i) * size_t(taps) + size_t(win.first - first) + j] =
            int16_t(v < 0 ? v - 0.5 : v + 0.5);
      }
    }
  }
  if (n > 0) {
    aw.in_lo = *std::min_element(aw.first.begin(), aw.first.end());
    aw.in_hi = *std::max_element(aw.first.begin(), aw.first.end()) + aw.taps;
  }
  return aw;
}

namespace {

inline uint8_t clamp_u8(int32_t v) { return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v)); }

// One output pixel from `taps` RGBX input pixels.
inline void pixel_scalar(const uint8_t* p, const int16_t* k, int taps, int32_t bias, int precision,
                         uint8_t* d) {
  int32_t a0 = bias, a1 = bias, a2 = bias;
  for (int t = 0; t < taps; ++t) {
    a0 += int32_t(p[4 * t]) * k[t];
    a1 += int32_t(p[4 * t + 1]) * k[t];
    a2 += int32_t(p[4 * t + 2]) * k[t];
  }
  d[0] = clamp_u8(a0 >> precision);
  d[1] = clamp_u8(a1 >> precision);
  d[2] = clamp_u8(a2 >> precision);
}

template <int Taps>
void rows_fixed(const uint8_t* src, size_t src_stride, int x_origin, int row_count,
                const AxisWeights& w, uint8_t* dst, size_t dst_stride) {
  const int n = w.out_end - w.out_begin;
  const int32_t bias = w.precision > 0 ? 1 << (w.precision - 1) : 0;
  const int taps = Taps > 0 ? Taps : w.taps;
  for (int r = 0; r < row_count; ++r) {
    const uint8_t* s = src + size_t(r) * src_stride;
    uint8_t* d = dst + size_t(r) * dst_stride;
    for (int i = 0; i < n; ++i) {
      pixel_scalar(s + size_t(w.first[size_t(i)] - x_origin) * 4,
                   w.weights.data() + size_t(i) * size_t(taps), taps, bias, w.precision, d + 3 * i);
    }
  }
}

#if defined(__AVX2__)
// Four taps per step: the bytes of 4 RGBX pixels are shuffled into channel pairs, widened to int16
// and multiplied with _mm256_madd_epi16 against (w0, w1) / (w2, w3) pairs; the two 128-bit halves
// are summed at the end. Integer arithmetic, so the result equals the scalar loop's exactly.
void rows_avx2(const uint8_t* src, size_t src_stride, int x_origin, int row_count,
               const AxisWeights& w, uint8_t* dst, size_t dst_stride) {
  const int n = w.out_end - w.out_begin;
  const int groups = (w.taps + 3) / 4;
  thread_local std::vector<int32_t> packed;
  packed.assign(size_t(n) * size_t(groups) * 8, 0);
  for (int i = 0; i < n; ++i) {
    const int16_t* k = w.weights.data() + size_t(i) * size_t(w.taps);
    for (int g = 0; g < groups; ++g) {
      for (int half = 0; half < 2; ++half) {
        const int t = 4 * g + 2 * half;
        const uint16_t lo = uint16_t(t < w.taps ? k[t] : 0);
        const uint16_t hi = uint16_t(t + 1 < w.taps ? k[t + 1] : 0);
        const int32_t pair = int32_t(uint32_t(lo) | uint32_t(hi) << 16);
        for (int c = 0; c < 4; ++c)
          packed[(size_t(i) * size_t(groups) + size_t(g)) * 8 + size_t(half * 4 + c)] = pair;
      }
    }
  }
  const __m128i shuffle = _mm_setr_epi8(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
  const int32_t bias32 = w.precision > 0 ? 1 << (w.precision - 1) : 0;
  const __m128i bias = _mm_set1_epi32(bias32);
  const __m128i shift = _mm_cvtsi32_si128(w.precision);
  // Outputs whose 16-byte loads would pass the last tap of the axis take the scalar path, so no
  // read leaves the input range the weights name.
  const int vector_limit = w.in_hi - 4 * groups;
  auto store = [n](uint8_t* d, int i, int32_t rgbx) {
    // 4 bytes for 3 where the 4th lands on the next pixel, which overwrites it.
    if (i + 1 < n) {
      std::memcpy(d + 3 * i, &rgbx, 4);
    } else {
      std::memcpy(d + 3 * i, &rgbx, 3);
    }
  };
  auto taps_of = [&](const uint8_t* p, const int32_t* k) {
    __m256i acc = _mm256_setzero_si256();
    for (int g = 0; g < groups; ++g) {
      const __m128i px =
          _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * g)), shuffle);
      const __m256i kk = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + 8 * g));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(px), kk));
    }
    return acc;
  };
  // Two rows at a time share the weights and one reduction.
  const __m256i bias2 = _mm256_set1_epi32(bias32);
  int r = 0;
  for (; r + 2 <= row_count; r += 2) {
    const uint8_t* s0 = src + size_t(r) * src_stride;
    const uint8_t* s1 = s0 + src_stride;
    uint8_t* d0 = dst + size_t(r) * dst_stride;
    uint8_t* d1 = d0 + dst_stride;
    for (int i = 0; i < n; ++i) {
      const size_t off = size_t(w.first[size_t(i)] - x_origin) * 4;
      if (w.first[size_t(i)] > vector_limit) {
        const int16_t* k = w.weights.data() + size_t(i) * size_t(w.taps);
        pixel_scalar(s0 + off, k, w.taps, bias32, w.precision, d0 + 3 * i);
        pixel_scalar(s1 + off, k, w.taps, bias32, w.precision, d1 + 3 * i);
        continue;
      }
      const int32_t* k = packed.data() + size_t(i) * size_t(groups) * 8;
      const __m256i a0 = taps_of(s0 + off, k), a1 = taps_of(s1 + off, k);
      __m256i sum = _mm256_add_epi32(_mm256_permute2x128_si256(a0, a1, 0x20),
                                     _mm256_permute2x128_si256(a0, a1, 0x31));
      sum = _mm256_sra_epi32(_mm256_add_epi32(sum, bias2), shift);
      const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(sum, sum), sum);
      store(d0, i, _mm_cvtsi128_si32(_mm256_castsi256_si128(bytes)));
      store(d1, i, _mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1)));
    }
  }
  for (; r < row_count; ++r) {
    const uint8_t* s = src + size_t(r) * src_stride;
    uint8_t* d = dst + size_t(r) * dst_stride;
    for (int i = 0; i < n; ++i) {
      const uint8_t* p = s + size_t(w.first[size_t(i)] - x_origin) * 4;
      if (w.first[size_t(i)] > vector_limit) {
        pixel_scalar(p, w.weights.data() + size_t(i) * size_t(w.taps), w.taps, bias32, w.precision,
                     d + 3 * i);
        continue;
      }
      const __m256i acc = taps_of(p, packed.data() + size_t(i) * size_t(groups) * 8);
      __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
      sum = _mm_sra_epi32(_mm_add_epi32(sum, bias), shift);
      store(d, i, _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(sum, sum), sum)));
    }
  }
}
#endif

}  // namespace

void resample_rows(const uint8_t* src, size_t src_stride, int x_origin, int row_count,
                   const AxisWeights& w, uint8_t* dst, size_t dst_stride) {
  const int n = w.out_end - w.out_begin;
  if (w.identity || w.taps == 1) {
    for (int r = 0; r < row_count; ++r) {
      const uint8_t* s = src + size_t(r) * src_stride;
      uint8_t* d = dst + size_t(r) * dst_stride;
      for (int i = 0; i < n; ++i) {
        const uint8_t* p = s + size_t(w.first[size_t(i)] - x_origin) * 4;
        d[3 * i] = p[0];
        d[3 * i + 1] = p[1];
        d[3 * i + 2] = p[2];
      }
    }
    return;
  }
#if defined(__AVX2__)
  return rows_avx2(src, src_stride, x_origin, row_count, w, dst, dst_stride);
#endif
  switch (w.taps) {
    case 2:
      return rows_fixed<2>(src, src_stride, x_origin, row_count, w, dst, dst_stride);
    case 3:
      return rows_fixed<3>(src, src_stride, x_origin, row_count, w, dst, dst_stride);
    case 4:
      return rows_fixed<4>(src, src_stride, x_origin, row_count, w, dst, dst_stride);
    case 5:
      return rows_fixed<5>(src, src_stride, x_origin, row_count, w, dst, dst_stride);
    case 6:
      return rows_fixed<6>(src, src_stride, x_origin, row_count, w, dst, dst_stride);
    default:
      return rows_fixed<0>(src, src_stride, x_origin, row_count, w, dst, dst_stride);
  }
}

void resample_column_row(const uint8_t* const* rows, const int16_t* weights, int taps,
                         int precision, int count, uint8_t* dst, int32_t* acc) {
  const int32_t bias = precision > 0 ? 1 << (precision - 1) : 0;
  int start = 0;
#if defined(__AVX2__)
  // 16 values per block, two rows per _mm256_madd_epi16: the rows' bytes are interleaved so each
  // int16 pair (row t, row t+1) meets its weight pair. The accumulators stay in registers.
  const __m128i shift = _mm_cvtsi32_si128(precision);
  for (; start + 16 <= count; start += 16) {
    __m256i lo = _mm256_set1_epi32(bias), hi = lo;
    int t = 0;
    for (; t + 1 < taps; t += 2) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t] + start));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t + 1] + start));
      const __m256i k = _mm256_set1_epi32(
          int32_t(uint32_t(uint16_t(weights[t])) | uint32_t(uint16_t(weights[t + 1])) << 16));
      lo =
          _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)), k));
      hi =
          _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)), k));
    }
    if (t < taps) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t] + start));
      const __m256i k = _mm256_set1_epi32(int32_t(uint16_t(weights[t])));
      const __m128i z = _mm_setzero_si128();
      lo =
          _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, z)), k));
      hi =
          _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, z)), k));
    }
    lo = _mm256_sra_epi32(lo, shift);
    hi = _mm256_sra_epi32(hi, shift);
    // Lanes hold values [0..3 | 4..7] and [8..11 | 12..15]; pack within lanes, then reorder.
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
    const __m128i bytes =
        _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + start), bytes);
  }
#endif
  for (int x = start; x < count; ++x) acc[x] = bias;
  for (int t = 0; t < taps; ++t) {
    const uint8_t* r = rows[t];
    const int32_t k = weights[t];
    if (k == 0) continue;
    for (int x = start; x < count; ++x) acc[x] += int32_t(r[x]) * k;
  }
  for (int x = start; x < count; ++x) dst[x] = clamp_u8(acc[x] >> precision);
}

}  // namespace stoker
